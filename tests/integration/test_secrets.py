"""No secret reaches any text the shim produces (docs/architecture.md), with every code path exercised.

With `debug: true`, the service runs against a Basic-auth docker-registry, a Bearer-token
registry, a registry that refuses its configured password and the stand-in API server (with a
token); it pulls (caller credentials included), fails, reloads (SIGHUP, edits, an invalid
edit, ConfigMap versions good and malformed), answers garbage, and is asked by `--dry-run` and
`--resolve`. Every log line of master, worker and syncer, every gRPC error message a client
saw, every datagram sent to NOTIFY_SOCKET and every command's output is collected, then
searched for every password, every token and any Authorization value. The files the shim
writes must be 0600, the socket 0660, stateDir 0700.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.harness import Containerd, ImageBuilder, RegistryFactory
from tests.harness.cri import CriClient
from tests.harness.evidence import record
from tests.harness.kubeapi import KubeApi
from tests.harness.processes import wait_for
from tests.harness.service import Service, start_service
from tests.harness.tinyregistry import OCI_MANIFEST, TinyRegistry

RUN = uuid.uuid4().hex[:8]
BASIC_USER, BASIC_PW = "basic-user", f"basic:pw-{RUN}"  # a colon inside: split at the first one
BEARER_USER, BEARER_PW = "bearer-user", f"bearer-pw-{RUN}"
BEARER_TOKEN = f"tok-secret-{RUN}"  # the tiny registry accepts tokens starting with "tok-"
REFUSED_PW, REFUSED_PW_2 = f"refused-pw-{RUN}", f"refused-pw2-{RUN}"
CALLER_PW = f"caller-pw-{RUN}"  # kubelet's imagePullSecret for the original registry
INVALID_PW = f"invalid-edit-pw-{RUN}"
CM_PW, CM_BAD_PW, CM_BAD_PW_2 = f"cm-pw-{RUN}", f"cm-bad-pw-{RUN}", f"cm-bad-pw2-{RUN}"
KUBE_TOKEN = f"kube-token-{RUN}"
CLI_PW = f"cli-pw-{RUN}"

PASSWORDS = {
    "Basic registry password": BASIC_PW,
    "Bearer registry password": BEARER_PW,
    "Bearer token": BEARER_TOKEN,
    "refused password": REFUSED_PW,
    "refused password after the edit": REFUSED_PW_2,
    "caller's password": CALLER_PW,
    "password of an invalid edit": INVALID_PW,
    "ConfigMap password": CM_PW,
    "malformed ConfigMap password": CM_BAD_PW,
    "rejected ConfigMap password": CM_BAD_PW_2,
    "API server token": KUBE_TOKEN,
    "password of an invalid config": CLI_PW,
}
USERS = {
    BASIC_PW: BASIC_USER,
    BEARER_PW: BEARER_USER,
    REFUSED_PW: "refused",
    REFUSED_PW_2: "refused",
    CALLER_PW: "caller",
    CM_PW: "cm",
}
# "Basic <base64>" / "Bearer <token>" as a header value, not masked ("Basic ***") and not a challenge
AUTH_VALUE = re.compile(r"(?i)\b(basic|bearer)\s+(?!\*\*\*)(?!realm=)([A-Za-z0-9._~+/-]{8,}=*)")


def secrets() -> dict[str, str]:
    """Every value that must never appear: passwords, tokens, and their Authorization encodings."""
    found = dict(PASSWORDS)
    for password, user in USERS.items():
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
        found[f"Basic credentials of {user}"] = encoded
    return found


class Transcript:
    """Every text the shim produced, by where it came from."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, source: str, text: str) -> None:
        self.texts.append((source, text))

    def leaks(self) -> list[str]:
        found = []
        for source, text in self.texts:
            for name, value in secrets().items():
                at = text.find(value)
                if at >= 0:
                    found.append(f"{name} in {source}: ...{text[max(0, at - 80) : at + 40]!r}")
            for match in AUTH_VALUE.finditer(text):
                found.append(f"an Authorization value in {source}: {match.group(0)!r}")
        return found

    def size(self) -> int:
        return sum(len(text) for _, text in self.texts)


def run_command(transcript: Transcript, what: str, argv: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env)
    output = done.stdout + done.stderr
    transcript.add(what, output)
    assert "Traceback" not in output, output
    return output


def cli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "image_cri_shim", "-f", str(config), *args]


@pytest.fixture
def tiny() -> Iterator[tuple[TinyRegistry, TinyRegistry]]:
    """A Bearer registry (its token endpoint hands out BEARER_TOKEN) and one that refuses every password."""
    bearer, refusing = TinyRegistry(), TinyRegistry()
    bearer.behaviour.bearer = True
    bearer.behaviour.token_body = json.dumps({"token": BEARER_TOKEN, "expires_in": 300}).encode()
    refusing.behaviour.basic = ("refused", f"never-configured-{RUN}")
    yield bearer, refusing
    bearer.stop()
    refusing.stop()


def grpc_failure(errors: list[str], call: Callable[[], object]) -> grpc.StatusCode | None:
    """Run a call; a failure's code and message are kept for the search."""
    try:
        call()
    except grpc.RpcError as err:
        errors.append(f"{err.code()}: {err.details()}")
        return err.code()
    return None


def refusals_above(service: Service, count: int) -> bool:
    return service.process.log_text().count(" not applied: ") > count


def garbage(socket_path: Path, errors: list[str]) -> int:
    """Random bytes, and a request carrying the caller's password followed by garbage, to every
    image method and to Version, in both CRI versions."""
    from cri_api.v1 import api_pb2 as v1

    rng = random.Random(RUN)
    with_password = v1.PullImageRequest(
        image=v1.ImageSpec(image="nginx:1"), auth=v1.AuthConfig(username="caller", password=CALLER_PW)
    ).SerializeToString()
    channel = grpc.insecure_channel(f"unix://{socket_path}")
    sent = 0
    try:
        for version in ("runtime.v1", "runtime.v1alpha2"):
            for method in (
                "ImageService/PullImage",
                "ImageService/ImageStatus",
                "ImageService/ListImages",
                "ImageService/RemoveImage",
                "ImageService/ImageFsInfo",
                "RuntimeService/Version",
            ):
                call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(f"/{version}.{method}")
                for body in (rng.randbytes(rng.randint(1, 300)), with_password + b"\xff\xff\xff"):
                    grpc_failure(errors, functools.partial(call, body, timeout=10))
                    sent += 1
    finally:
        channel.close()
    return sent


def test_no_secret_in_logs_errors_status_or_output(
    containerd: Containerd,
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    tiny: tuple[TinyRegistry, TinyRegistry],
    short_dir: Path,
) -> None:
    bearer, refusing = tiny
    basic = registry_factory(auth=(BASIC_USER, BASIC_PW))
    basic_repo, bearer_repo = f"library/sec-basic-{RUN}", f"library/sec-bearer-{RUN}"
    image_factory(basic, basic_repo, "1")
    bearer.add_manifest(bearer_repo, "1", {"schemaVersion": 2, "mediaType": OCI_MANIFEST})
    basic_image, bearer_image = f"sec-basic-{RUN}:1", f"sec-bearer-{RUN}:1"
    config: dict[str, Any] = {
        "cri": containerd.address,
        "debug": True,
        "reloadInterval": "1s",
        "address": basic.url,
        "auth": f"{BASIC_USER}:{BASIC_PW}",
        "registries": [
            {"address": f"http://{refusing.host}", "auth": f"refused:{REFUSED_PW}", "priority": 1500},
            {"address": f"http://{bearer.host}", "auth": f"{BEARER_USER}:{BEARER_PW}", "priority": 900},
        ],
    }
    transcript = Transcript()
    errors: list[str] = []
    with KubeApi(tokens={KUBE_TOKEN: "allowed"}) as api:
        api.apply_configmap("image-cri-shim", {"registries.yaml": "version: v1\n"})
        kubeconfig = api.write_kubeconfig(short_dir / "kubeconfig", token=KUBE_TOKEN)
        service = start_service(short_dir, config, env={"KUBECONFIG": str(kubeconfig)})
        try:
            exercise(service, api, transcript, errors, basic_image, bearer_image, bearer, refusing)
            state = short_dir / "state"
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()}
            assert stat.S_IMODE(state.stat().st_mode) == 0o700, oct(state.stat().st_mode)
            assert modes and all(mode & 0o077 == 0 for mode in modes.values()), modes
            assert stat.S_IMODE(os.stat(service.socket).st_mode) == 0o660
        finally:
            code = service.stop()
            print(service.process.describe(120))
        assert code == 0
        transcript.add("master, worker and syncer stderr", service.process.log_text())
        transcript.add("NOTIFY_SOCKET datagrams", service.notify.text())
    for error in errors:
        transcript.add("a gRPC error message", error)

    log = service.process.log_text()
    # The paths were taken: otherwise finding nothing would prove nothing.
    assert "level=debug" in log and "proc=syncer" in log and "proc=worker" in log
    assert f"target=127.0.0.1:{bearer.port}/{bearer_repo}:1" in log, log[-3000:]
    assert any(p == "/token" and a.startswith("Basic ") for _, p, a in bearer.requests), "token with Basic"
    assert any(a.startswith("Bearer tok-") for _, _, a in bearer.requests), "manifest with the token"
    assert refusing.count() >= 2 and log.count(" not applied: ") >= 2
    assert "last reload: failed" in service.notify.text()
    leaks = transcript.leaks()
    record(
        "no secret in any log line, gRPC error, STATUS= or command output",
        load=f"debug on; {len(errors)} failed gRPC calls seen; {transcript.size():,} characters searched",
        faults="Basic + Bearer + refused registries, caller credentials, garbage requests, reloads, "
        "an invalid edit, malformed ConfigMap versions, --dry-run, --resolve",
        failed=len(leaks),
        lost="none",
        result="no password, token or Authorization value found; files 0600, socket 0660, stateDir 0700"
        if not leaks
        else f"{len(leaks)} leaks",
    )
    assert not leaks, "\n".join(leaks)


def exercise(
    service: Service,
    api: KubeApi,
    transcript: Transcript,
    errors: list[str],
    basic_image: str,
    bearer_image: str,
    bearer: TinyRegistry,
    refusing: TinyRegistry,
) -> None:
    """Every path that handles a credential, while the service runs."""
    with CriClient(service.socket) as client:
        # Basic: rewritten to the Basic registry, the caller's credentials replaced by its own.
        assert client.pull(basic_image, "caller", CALLER_PW).startswith("sha256:")
        assert client.status(basic_image) is not None
        client.list()
        # Bearer: found with a token; the runtime cannot fetch its blobs, so the pull fails.
        assert grpc_failure(errors, lambda: client.pull(bearer_image, "caller", CALLER_PW, timeout=60))
        # Nobody holds it: upstream unchanged with the caller's credentials, the runtime fails.
        missing = f"127.0.0.1:{refusing.port}/library/missing-{RUN}:1"
        assert grpc_failure(errors, lambda: client.pull(missing, "caller", CALLER_PW, timeout=60))
        assert garbage(service.socket, errors) == 24

        service.reload_and_wait(lambda: service.process.signal(signal.SIGHUP))
        # A new password for the refusing registry, then an invalid edit that carries one.
        service.reload_and_wait(
            lambda: service.edit(lambda c: c["registries"][0].update(auth=f"refused:{REFUSED_PW_2}"))
        )
        assert client.pull(basic_image, "caller", CALLER_PW).startswith("sha256:")

        def invalid(c: dict[str, Any]) -> None:
            c["registries"].append(
                {"address": "http://invalid.test", "auth": f"x:{INVALID_PW}", "priority": "high"}
            )

        ready = service.reload_and_wait(lambda: service.edit(invalid))
        assert "last reload: failed" in ready["STATUS"]
        # Back to the settings in force: the master sees the same settings and starts no worker.
        service.edit(lambda c: c["registries"].pop())
        wait_for(lambda: "the same settings" in service.process.log_text(), 10, "the edit back to be seen")

        # ConfigMap: a good version with a password (the file is written, 0600), then bad ones.
        good = yaml.safe_dump(
            {
                "sealos": {
                    "address": yaml.safe_load(service.config.read_text())["address"],
                    "auth": {"username": BASIC_USER, "password": BASIC_PW},
                },
                "registries": [
                    {
                        "address": f"http://{refusing.host}",
                        "auth": {"username": "cm", "password": CM_PW},
                        "priority": 1500,
                    },
                    {
                        "address": f"http://{bearer.host}",
                        "auth": f"{BEARER_USER}:{BEARER_PW}",
                        "priority": 900,
                    },
                ],
                "cache": {"imageCacheSize": 77},
            }
        )
        service.reload_and_wait(lambda: api.apply_configmap("image-cri-shim", {"registries.yaml": good}))
        assert stat.S_IMODE(service.config.stat().st_mode) == 0o600
        assert "imageCacheSize: 77" in service.config.read_text()
        assert client.pull(basic_image, "caller", CALLER_PW).startswith("sha256:")
        for bad in (
            f"sealos: {{address: http://x.test, auth: {{username: u, password: {CM_BAD_PW}}}\n",
            f"registries: [{{address: y.test, auth: {{username: u, password: {CM_BAD_PW_2}}}, "
            "priority: high}]\n",
        ):
            said = service.process.log_text().count(" not applied: ")
            api.apply_configmap("image-cri-shim", {"registries.yaml": bad})
            wait_for(
                functools.partial(refusals_above, service, said), 10, "the refusal of a malformed version"
            )

    # upstream: false: the refusal lists every candidate and its answer. A new connection: one
    # made before the reload may be served by the old worker until its connection age.
    service.reload_and_wait(lambda: service.edit(lambda c: c.update(upstream=False)))
    with CriClient(service.socket) as client:
        code = grpc_failure(errors, lambda: client.pull(f"nowhere-{RUN}:1", "caller", CALLER_PW))
        assert code == grpc.StatusCode.NOT_FOUND, errors[-1]

    env = {**os.environ, "HOME": str(service.directory), "KUBECONFIG": "/nonexistent"}
    for args in (("--dry-run",), ("--resolve", basic_image), ("--resolve", bearer_image), ("--version",)):
        run_command(transcript, f"image-cri-shim {' '.join(args)}", cli(service.config, *args), env)
    # A second instance on the live socket refuses to start: its message too.
    run_command(transcript, "a second instance", cli(service.config), env)


INVALID_CONFIGS = {
    "priority next to a password": (
        f"address: http://a.test\nauth: 'u:{CLI_PW}'\nregistries: [{{address: b.test, auth: 'v:{CLI_PW}', "
        "priority: high}]\n"
    ),
    "auth without a colon": f"address: http://a.test\nauth: {CLI_PW}\n",
    "auth as a mapping": f"address: http://a.test\nauth: {{username: u, password: {CLI_PW}}}\n",
    "a YAML error on the auth line": f"address: http://a.test\nauth: u:{CLI_PW}: x\n",
    "credentials in the address": f"address: http://u:{CLI_PW}@a.test\n",
    "duplicate domains": (
        f"address: http://a.test\nauth: 'u:{CLI_PW}'\n"
        f"registries: [{{address: http://a.test, auth: 'v:{CLI_PW}'}}]\n"
    ),
}


def test_invalid_configs_never_echo_a_password(short_dir: Path) -> None:
    """Start-up, --dry-run, --resolve and the syncer on invalid configs that carry a password."""
    transcript = Transcript()
    env = {**os.environ, "HOME": str(short_dir), "KUBECONFIG": str(short_dir / "none")}
    for name, text in INVALID_CONFIGS.items():
        path = short_dir / "config.yaml"
        path.write_text(text)
        for args in ((), ("--dry-run",), ("--resolve", "nginx:1")):
            output = run_command(
                transcript, f"{name}: image-cri-shim {' '.join(args)}", cli(path, *args), env
            )
            assert output.count("\n") == 1 and f"config {path}" in output, output
        syncer = [sys.executable, "-m", "image_cri_shim", "syncer", "-f", str(path)]
        run_command(transcript, f"{name}: the syncer", syncer, env)
    leaks = transcript.leaks()
    record(
        "invalid configs that carry a password: start-up, --dry-run, --resolve, syncer",
        load=f"{len(INVALID_CONFIGS)} configs x 4 commands",
        faults="bad priority, auth without colon or as a mapping, YAML errors, credentials in a URL, "
        "duplicate domains",
        failed=len(leaks),
        lost="none",
        result="one line naming file and key, no password" if not leaks else f"{len(leaks)} leaks",
    )
    assert not leaks, "\n".join(leaks)


def test_the_search_finds_what_it_looks_for() -> None:
    """The search itself: a password, an encoded credential and header values are found."""
    encoded = base64.b64encode(f"{BASIC_USER}:{BASIC_PW}".encode()).decode()
    transcript = Transcript()
    transcript.add("a", f"level=debug msg=x auth={BASIC_PW}")
    transcript.add("b", f'headers="{{Authorization: Basic {encoded}}}"')
    transcript.add("c", "Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig")
    transcript.add("d", 'msg="Basic ***" challenge="Bearer realm=\\"https://auth.test/token\\"" Basic ***')
    found = transcript.leaks()
    assert len(found) == 4, found  # the password, the encoded pair and its header value, the token
    assert not [f for f in found if " in d:" in f], found
