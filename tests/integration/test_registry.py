"""The registry client against a real HTTP server: probes and auth flows.

Registries that misbehave (errors, throttling, silence, broken auth, huge bodies) are in
test_registry_faults.py."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from image_cri_shim import config, reference
from image_cri_shim.workers.lookup.client import Platform, RegistryClient
from image_cri_shim.workers.lookup.decisions import Answer, Probe
from tests.harness.clock import Clock
from tests.harness.processes import ShimFactory, wait_for
from tests.harness.tinyregistry import MANIFEST, TinyRegistry

AMD64 = Platform("linux", "amd64")


def registry_of(address: str, auth: str = "", extra: str = "") -> config.Registry:
    text = f"address: {address}\nauth: '{auth}'\n{extra}"
    return config.parse(text, "test.yaml").registries[0]


@pytest.fixture
def tiny() -> Iterator[TinyRegistry]:
    server = TinyRegistry()
    server.add_manifest("library/nginx", "1.27", MANIFEST)
    yield server
    server.stop()


def probe(client: RegistryClient, image: str) -> Probe:
    async def run() -> Probe:
        return await client.holds(reference.parse(image))

    return asyncio.run(run())


def run_probes(client: RegistryClient, *images: str) -> list[Probe]:
    async def run() -> list[Probe]:
        try:
            return [await client.holds(reference.parse(i)) for i in images]
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_found_and_not_found(tiny: TinyRegistry) -> None:
    client = RegistryClient(registry_of(f"http://{tiny.host}"), AMD64)
    found, missing, other_tag = run_probes(client, "nginx:1.27", "redis:7", "nginx:1.26")
    assert found.answer is Answer.FOUND
    assert missing.answer is Answer.NOT_FOUND
    assert other_tag.answer is Answer.NOT_FOUND
    assert ("HEAD", "/v2/library/nginx/manifests/1.27") in [(m, p) for m, p, _ in tiny.requests]


def test_bearer_token_is_fetched_once_and_reused(tiny: TinyRegistry) -> None:
    tiny.behaviour.bearer = True
    client = RegistryClient(registry_of(f"http://{tiny.host}"), AMD64)
    results = run_probes(client, "nginx:1.27", "nginx:1.27", "nginx:1.27")
    assert [r.answer for r in results] == [Answer.FOUND] * 3
    assert tiny.tokens_issued == 1
    # the first probe met the challenge; the later ones sent the token straight away
    assert tiny.count(lambda m, p: p.startswith("/v2/library/nginx")) == 4


def test_bearer_token_renewed_after_expiry(tiny: TinyRegistry) -> None:
    tiny.behaviour.bearer = True
    tiny.behaviour.token_lifetime = 60
    clock = Clock()
    client = RegistryClient(registry_of(f"http://{tiny.host}"), AMD64, clock=clock)

    async def run() -> None:
        try:
            ref = reference.parse("nginx:1.27")
            assert (await client.holds(ref)).answer is Answer.FOUND
            clock.now += 30
            assert (await client.holds(ref)).answer is Answer.FOUND
            assert tiny.tokens_issued == 1
            clock.now += 60
            assert (await client.holds(ref)).answer is Answer.FOUND
            assert tiny.tokens_issued == 2
        finally:
            await client.aclose()

    asyncio.run(run())


def test_basic_auth(tiny: TinyRegistry) -> None:
    tiny.behaviour.basic = ("admin", "pa:ss")
    good = RegistryClient(registry_of(f"http://{tiny.host}", "admin:pa:ss"), AMD64)
    bad = RegistryClient(registry_of(f"http://{tiny.host}", "admin:wrong"), AMD64)
    anonymous = RegistryClient(registry_of(f"http://{tiny.host}"), AMD64)
    assert [p.answer for p in run_probes(good, "nginx:1.27", "nginx:1.27")] == [Answer.FOUND] * 2
    assert run_probes(bad, "nginx:1.27")[0].answer is Answer.DENIED
    assert run_probes(anonymous, "nginx:1.27")[0].answer is Answer.DENIED


def test_a_missing_ssl_cert_file_is_one_line_naming_it(
    short_dir: Path, shim_factory: ShimFactory, tiny: TinyRegistry
) -> None:
    """The worker keeps serving and says it once; `--resolve` exits 1 with that one line."""
    said = "SSL_CERT_FILE=/nonexistent/ca.pem (environment): No such file or directory"
    runtime = socket.socket(socket.AF_UNIX)  # a runtime that listens and never answers
    runtime.bind(str(short_dir / "cri.sock"))
    runtime.listen()
    path = short_dir / "config.yaml"
    path.write_text(
        f"shim: {short_dir / 'shim.sock'}\ncri: {short_dir / 'cri.sock'}\n"
        f"stateDir: {short_dir / 'state'}\naddress: http://{tiny.host}\n"
    )
    env = {**os.environ, "SSL_CERT_FILE": "/nonexistent/ca.pem"}
    try:
        worker = shim_factory(path, short_dir / "shim.sock", env=env)
        line = wait_for(
            lambda: next(
                (x for x in worker.log_text().splitlines() if "registries cannot be asked" in x), None
            ),
            10.0,
            "the worker to say why it cannot ask the registries",
            detail=worker.describe,
        )
        assert f'error="{said}"' in line
        assert worker.alive() and "Traceback" not in worker.log_text()
        command = [sys.executable, "-m", "image_cri_shim", "--resolve", "nginx:1.27", "--file", str(path)]
        resolved = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    finally:
        runtime.close()
    assert (resolved.returncode, resolved.stderr) == (1, f"image-cri-shim: {said}\n"), resolved
