"""What a real containerd answers when a pull fails, for every fault the classifier knows.

`python -m tools.pullmessages` starts this machine's containerd (1.6 on Debian 12) and those of
Debian trixie (1.7) and sid (2.x), chrooted, each with its own root, provokes each fault of
`FAULTS` by pulling straight from it, and writes what it answered into tests/pull-messages.json
under its version. tests/unit/test_failures.py reads that file, so the words of every version
checked stay checked on any machine; tests/integration/test_failures_provoked.py runs the same
faults against the containerd of the test session.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from image_cri_shim.workers.failures import Cause
from tests.harness import CertAuthority, CertsDir, Containerd, CriClient, ImageBuilder, RegistryFactory
from tests.harness.containerd import ROOT_PACKAGES, SMALL_DISK
from tests.harness.pullfaults import PullFaults
from tests.harness.pullrecord import FAULTS, FILE, load
from tests.harness.rootfs import debian_root


def collect(faults: PullFaults, expected: dict[str, Cause] = FAULTS) -> list[dict[str, str]]:
    rows = []
    for fault, cause in expected.items():
        code, message = faults.provoke(fault)
        rows.append({"fault": fault, "code": code, "message": message, "cause": cause.name})
        print(f"  {fault}: {code} {message}", flush=True)
    return rows


def save(version: str, rows: list[dict[str, str]]) -> None:
    table = load()
    table[version] = rows
    FILE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


def run(containerd: Containerd, small: Containerd, work: Path) -> tuple[str, list[dict[str, str]]]:
    """Provoke every fault against a started `containerd` (and `small`, the same one with a
    small disk); its version and the rows."""
    registries = RegistryFactory(work / "registries", CertAuthority.create(work / "ca"), containerd.certs_d)
    client, tiny = CriClient(containerd.socket), CriClient(small.socket)
    try:
        version = f"containerd {containerd.version().runtime_version}"
        print(version, flush=True)
        faults = PullFaults(client, registries, ImageBuilder(work / "images"), work, small_disk=tiny)
        return version, collect(faults)
    finally:
        client.close()
        tiny.close()
        registries.close()


def daemons(work: Path, suite: str) -> tuple[Containerd, Containerd]:
    """The containerd of a Debian `suite` ("host": this machine's), and one with a small disk."""
    root = None if suite == "host" else debian_root(suite, ROOT_PACKAGES)
    certs = CertsDir(work / "certs.d")
    return (
        Containerd(work / f"{suite}", certs, root=root),
        Containerd(work / f"{suite}-small", certs, root=root, disk=SMALL_DISK),
    )


def main(suites: list[str]) -> int:
    """`python -m tools.pullmessages [host] [trixie] [sid]` (default: all three)."""
    for suite in suites or ["host", "trixie", "sid"]:
        with tempfile.TemporaryDirectory(prefix="pullmessages-") as tmp:
            work = Path(tmp)
            containerd, small = daemons(work, suite)
            containerd.start()
            try:
                small.start()
                version, rows = run(containerd, small, work)
            finally:
                small.stop()
                containerd.stop()
        save(version, rows)
        print(f"wrote {len(rows)} messages of {version} to {FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
