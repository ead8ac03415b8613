"""Reading the master's metrics endpoint over TCP or a unix socket, as Prometheus would."""

from __future__ import annotations

import http.client
import socket

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.unix_path)


def get(address: str, path: str) -> tuple[int, str]:
    if address.startswith("/"):
        conn: http.client.HTTPConnection = UnixConnection(address)
    else:
        host, port = address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def scrape(address: str) -> Samples:
    """Every sample of /metrics, parsed by prometheus-client's parser (which fails on bad text)."""
    status, text = get(address, "/metrics")
    assert status == 200, text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get(("image_cri_shim_" + name, frozenset(labels.items())))
