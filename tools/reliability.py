"""`make reliability`: run every scenario that records evidence, then write docs/reliability.md.

A scenario test calls `tests.harness.evidence.record(...)` with what it measured; conftest marks
such tests `reliability` by itself. This runs `pytest -m reliability` once with
$RELIABILITY_RECORD pointing at a fresh file, and turns the records of that run, with each
test's outcome, into one table grouped by area. `--all` runs the whole suite instead (records
made by any test are taken); arguments after `--` go to pytest. The exit status is pytest's:
the document is written either way, with failed scenarios marked.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

from tests.harness.evidence import ENV, Evidence, read
from tools.bench import machine

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "reliability.md"

# Test module (prefix) -> area, in the order the areas appear.
AREAS = (
    ("tests/integration/test_soak", "Soak"),
    ("tests/integration/test_supervisor", "Processes, reloads and the shim socket"),
    ("tests/integration/test_heartbeat", "A worker that stops serving, a runtime that stops answering"),
    ("tests/integration/test_syncer", "ConfigMap syncer and the config file"),
    ("tests/integration/test_runtime_faults", "The container runtime"),
    ("tests/integration/test_registry_faults", "Registries that misbehave"),
    ("tests/integration/test_failover", "Pull-time failover"),
    ("tests/integration/test_grpc_faults", "gRPC input"),
    ("tests/integration/test_worker", "The proxy worker"),
    ("tests/integration/test_secrets", "Secrets"),
    ("tests/integration/test_local_user", "A local user"),
)

NOTES = """\
## Notes

- **Failed calls** counts calls that failed beyond what the scenario allows; where some failures
  are expected (a SIGKILLed worker's calls, a stopped runtime), the column says which and why.
- **Data lost** is what a node would lose: a config file left partial or changed by a failed
  write, an image pulled through the shim that stops being reported under its caller's name,
  a ConfigMap version that never reaches the file.
- Each row is written by the test itself (`record` in `tests/harness/evidence.py`) from what it
  measured in this run; a scenario whose test failed is marked FAILED. `make soak` runs the soak
  for ten minutes; the suite and this table run its reduced form.

## Found along the way

Fixed:

- Registries: a read timeout alone never ended a probe whose server sent a header byte a second
  (each byte restarted it); a probe now has one deadline, `min(5 s, timeout / 2)`. Probes that met
  a dead registry together counted as that many failures (8 pulls: 60 s of backoff at once); they
  now count once, and the probes still waiting on it stop at once. A manifest over the body cap
  put the registry into backoff; it now means "not holding". Redirects were read whole by the HTTP
  client and unbounded in body size; they are followed by the shim, at most 5, without bodies and
  without credentials across hosts. Token and index bodies are capped at 4 MiB.
- A PullImage spent its registry probes outside `timeout`: an image whose only registry never
  answered took 1.5 times `timeout`. The probes now count against it (6.1 s for `timeout: 6s`).
- The runtime: after containerd came back, the worker's channel waited out grpc's reconnect
  backoff (seen: 5.6 to 29.7 s after a 60 s outage; grpc's cap is 120 s); it now retries at least
  once a second (calls succeed 0.4 to 0.8 s after containerd answers). Calls in flight when the
  runtime died, and answers over 16 MiB, reached the caller in grpc's own words, which read like
  the caller's fault; they now name the runtime's socket.
- A decision made while a better registry did not answer ("degraded") was cached for
  `negativeCacheTTL` rather than for that registry's backoff, so pulls went upstream unchanged for
  up to 30 s (49 s in one soak that set it so: 263 failed pulls of one image on an offline node)
  after the registry was back. It now lives only until the registry is asked again.
- One call of the twenty-reloads test failed on a machine starved of CPU with `UNAVAILABLE:
  Stream removed (sendmsg: Broken pipe)`: it raced the close of an old worker's connection at the
  end of its handover (connections age out after 5 s ±10 %; the old worker stopped 6.5 s after
  SIGTERM). The handover then lasted 8 s, which only narrowed the window: a client starved for
  longer still held its connection, with the GOAWAY unread, when the old worker stopped. The old
  worker now also waits (up to 30 s more) until no client is connected to it any more; a client
  held with SIGSTOP through the whole hand-over loses no call
  (`test_supervisor.py::test_a_client_starved_through_the_hand_over_loses_no_call`).
- The master's control socket failed with a traceback when the shim socket's directory could not
  be made; the service now reports it in one line and the worker's own error stops the start.
- A connection that never sent the HTTP/2 preface kept a descriptor of the worker for grpc's
  default handshake timeout, 120 s (and the 1,000-connection test's "nothing" connections did send
  a preface); the worker now closes silent connections after 10 s.
- Pulls that the chosen registry failed were not failed over: a partial mirror (manifest there, a
  layer blob lost) failed every pull with NOT_FOUND for `imageCacheTTL` (30 min by default), since
  kubelet's retries met the same cached decision; a registry SIGKILLed mid-download failed the pull
  with UNKNOWN. Such a pull now goes on to the next registry within the same call (partial mirror:
  the first pull succeeds in 0.1 to 0.4 s; registry death: 0.4 to 0.7 s after the connection broke),
  on containerd 1.6, 1.7 and 2.x. The runtime tells the shim only a status and a message, and 2.x
  words several failures differently from 1.x ("failed to resolve image", "short read", an index
  without the node's platform without the usual prefix), Docker Engine (through cri-dockerd) and
  CRI-O in words of their own ("Error response from daemon: …", a bare "EOF"; "RegistryUnavailable:
  … pinging container registry", a 403 as "denied"); every fault is provoked on each runtime and
  version and its message kept in tests/pull-messages.json.
- A local user could take the master's threads: the metrics endpoint started a thread per
  connection with no timeout, so clients that never ended their headers held one each (threads
  5 -> 10 within seconds of 64 such clients; a review saw 270, past systemd's TasksMax the master
  can start no worker). One thread now serves every connection, 8 at most, each closed 10 s after
  accept, the oldest unfinished one giving way to a new one (threads unchanged under the same
  attack, and scrapes answered).
- Under `umask 000` a new worker's hand-over socket was open to every user between its bind and
  its chmod: uid 65534 won 369 connections to four of six new workers' sockets during reloads
  (a connection outlives the chmod and the rename, and the RuntimeService passes through). Every
  socket is now bound 0600 and then set to its mode: 0 of 444,379 attempts won.
- An https registry naming a plain-http token realm got its Basic credentials sent there in
  clear; such a realm is now refused and the registry counts as denied.
- A `stateDir` anyone could write was trusted: a planted `names.json` was used and a planted
  `.names.lock` symlink made root create the link's target; a FIFO blocked the worker's start.
  Such a directory is now said at start and not used; the files are opened without following
  links, non-blocking, bounded. A config with passwords readable by others is said too.
- 30 concurrent PullImage calls with a 15 MiB unknown field took the worker from 50 to 705 MiB
  RSS, 789 MiB after five bursts (glibc's per-thread arenas and its rising mmap threshold). Requests
  over 4 MiB are now refused as they arrive, large blocks are mapped on their own in two arenas,
  and the heap is trimmed after calls that moved 16 MiB: 53 to 63 MiB after bursts of 4 MiB calls.
- Of 2,000 concurrent distinct PullImage calls, 118 to 176 per run ended with a bare CANCELLED:
  grpc's core holds calls the Python server has not yet taken (one at a time, on a thread that
  competes for the GIL with 256 busy call threads) and past 1,000 of them cancels newcomers at
  random, all past 3,000; 1,000 calls never get there. Those limits are now above the worker's
  own bound of 1,024 calls in flight, whose excess is answered RESOURCE_EXHAUSTED: no CANCELLED.

Kept, by design:

- The master restarts a syncer with a backoff that resets only after the syncer ran for a minute.
  A syncer SIGKILLed every 35 s was restarted after 1, 2, 4 ... 60 s, and ConfigMap changes did
  not reach the file in between (the first ten-minute soak). A syncer that keeps dying must not
  hammer the API server; the soak kills only syncers older than a minute.
- A reload reaches a client's existing connection when the old worker's connection ages out
  (about 5 s): a call made on it right after `READY=1` is still served with the previous config.
  That is how a swap drops no call; a test that needs the new config at once opens a new connection.
- A unary call whose caller vanishes runs on upstream until it ends or reaches its deadline
  (streams are cancelled). Cancelling it would take grpc's future API on every call, measured at
  +250 to 350 µs per call, about 40 % of a direct ImageStatus.
- The syncer crash test asked for more than 100 writes out of 200 ConfigMap versions; on a busy
  machine bursts of versions merge into fewer writes. It now asks for 40.
"""


def area(test: str) -> tuple[int, str]:
    for index, (prefix, name) in enumerate(AREAS):
        if test.startswith(prefix):
            return index, name
    module = test.split("::", 1)[0].removeprefix("tests/integration/test_").removesuffix(".py")
    return len(AREAS), module.replace("_", " ").capitalize()


def junit_key(test: str) -> str:
    """`tests/integration/test_x.py::test_y[p]` as the junit report names it:
    `tests.integration.test_x::test_y[p]`."""
    path, _, rest = test.partition("::")
    parts = [path.removesuffix(".py").replace("/", "."), *rest.split("::")]
    return ".".join(parts[:-1]) + "::" + parts[-1]


def outcomes(junit: Path) -> dict[str, str]:
    """junit key -> "passed", "failed" or "skipped"."""
    found: dict[str, str] = {}
    if not junit.exists():
        return found
    for case in ET.parse(junit).getroot().iter("testcase"):
        key = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            found[key] = "failed"
        elif case.find("skipped") is not None:
            found[key] = "skipped"
        else:
            found.setdefault(key, "passed")
    return found


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def document(records: Iterable[Evidence], results: dict[str, str], summary: str) -> str:
    rows = sorted(records, key=lambda r: (area(r.test), r.test))
    lines = [
        "# Reliability",
        "",
        f"Generated by `make reliability` on {datetime.date.today().isoformat()} from one run of "
        f"every scenario that records evidence ({summary}): {machine()}.",
        "",
        "| scenario | load during it | faults injected | failed calls | data lost | result | test |",
        "|---|---|---|---|---|---|---|",
    ]
    current = None
    for row in rows:
        name = area(row.test)[1]
        if name != current:
            current = name
            lines.append(f"| **{name}** | | | | | | |")
        verdict = results.get(junit_key(row.test), "passed")
        result = row.result if verdict == "passed" else f"**{verdict.upper()}**: {row.result}"
        test = row.test.removeprefix("tests/integration/")
        lines.append(
            "| "
            + " | ".join(cell(c) for c in (row.scenario, row.load, row.faults, row.failed, row.lost, result))
            + f" | `{cell(test)}` |"
        )
    recorded = {junit_key(r.test) for r in rows}
    silent = sorted(k for k, v in results.items() if v == "failed" and k not in recorded)
    lines.append("")
    if silent:
        lines.append("Failed before recording anything: " + ", ".join(f"`{k}`" for k in silent) + ".")
        lines.append("")
    lines.append(NOTES)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.reliability", description=__doc__)
    parser.add_argument("--all", action="store_true", help="run the whole suite, not only the scenarios")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default {OUTPUT}")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="reliability-") as work:
        records_path, junit = Path(work) / "records.jsonl", Path(work) / "junit.xml"
        records_path.touch()
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={junit}"]
        command += ([] if args.all else ["-m", "reliability"]) + args.pytest_args
        started = time.monotonic()
        done = subprocess.run(command, cwd=ROOT, env={**os.environ, ENV: str(records_path)}, check=False)
        took = time.monotonic() - started
        records = read(str(records_path))
        results = outcomes(junit)
    counts = {v: sum(1 for r in results.values() if r == v) for v in ("passed", "failed", "skipped")}
    summary = (
        f"{len(results)} tests, {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['skipped']} skipped, {len(records)} records, {took / 60:.1f} min"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(document(records, results, summary))
    print(f"wrote {args.output}: {summary}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
