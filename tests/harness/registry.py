"""Real `docker-registry` instances on 127.0.0.1 (plain, htpasswd, TLS) and misbehaving endpoints."""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

from .containerd import CertsDir
from .processes import HarnessError, ManagedProcess, wait_for

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (a connect gets "refused")."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(argv: list[str], what: str, timeout: float = 30.0, cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"{what}: timed out after {timeout:g}s: {' '.join(argv)}") from exc
    if done.returncode != 0:
        raise HarnessError(f"{what} failed (exit {done.returncode}): {' '.join(argv)}\n{done.stderr}")
    return done.stdout


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise HarnessError(f"{name} is not on PATH (Debian: apt-get install {package})")
    return path


@dataclass(frozen=True)
class CertAuthority:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost signed by it."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    cert_dir: Path  # holds only ca.crt: what skopeo's --dest-cert-dir and Docker's certs.d expect

    @classmethod
    def create(cls, directory: Path) -> CertAuthority:
        """Make the CA and server cert with openssl (EC P-256: fast, and accepted by Go and Python)."""
        openssl = _tool("openssl", "openssl")
        d = directory
        d.mkdir(parents=True, exist_ok=True)
        (d / "server.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
        )
        new_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        for what, args in [
            (
                "create CA",
                f"req -x509 {new_key} -days 7 -subj '/CN=image-cri-shim test CA' -keyout ca.key -out ca.crt "
                "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
            ),
            ("server key", f"req -new {new_key} -subj /CN=localhost -keyout server.key -out server.csr"),
            (
                "sign server cert",
                "x509 -req -days 7 -in server.csr -extfile server.ext -CA ca.crt -CAkey ca.key "
                "-CAcreateserial -out server.crt",
            ),
        ]:
            _run([openssl, *shlex.split(args)], f"openssl: {what}", cwd=d)
        cert_dir = d / "trust"
        cert_dir.mkdir(exist_ok=True)
        shutil.copyfile(d / "ca.crt", cert_dir / "ca.crt")
        return cls(d / "ca.crt", d / "ca.key", d / "server.crt", d / "server.key", cert_dir)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_cert))


class Registry:
    """One `docker-registry serve` process; stop() and start() keep the port and the storage."""

    def __init__(
        self,
        workdir: Path,
        *,
        username: str | None = None,
        password: str | None = None,
        ca: CertAuthority | None = None,
        port: int | None = None,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.workdir = workdir
        self.username = username
        self.password = password
        self.ca = ca
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.storage = workdir / "data"
        self.config_path = workdir / "config.yml"
        self.log_path = workdir / "registry.log"
        self.process: ManagedProcess | None = None
        self.start_seconds = 0.0

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`: the registry domain as it appears in image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "https" if self.ca is not None else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def auth(self) -> str | None:
        """`user:password` as the shim config's `auth` and skopeo's `--creds` want it."""
        return f"{self.username}:{self.password}" if self.username is not None else None

    @property
    def ca_path(self) -> Path | None:
        return self.ca.ca_cert if self.ca is not None else None

    @property
    def cert_dir(self) -> Path | None:
        return self.ca.cert_dir if self.ca is not None else None

    def _write_config(self) -> None:
        self.storage.mkdir(parents=True, exist_ok=True)
        http: dict[str, object] = {"addr": self.host, "secret": "image-cri-shim-tests"}
        if self.ca is not None:
            http["tls"] = {"certificate": str(self.ca.server_cert), "key": str(self.ca.server_key)}
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "info", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
            "http": http,
        }
        if self.username is not None and self.password is not None:
            htpasswd = _tool("htpasswd", "apache2-utils")
            line = _run([htpasswd, "-Bbn", self.username, self.password], "htpasswd")
            (self.workdir / "htpasswd").write_text(line.strip() + "\n")
            config["auth"] = {
                "htpasswd": {"realm": "image-cri-shim-tests", "path": str(self.workdir / "htpasswd")}
            }
        # JSON is valid YAML, and needs no quoting rules of its own.
        self.config_path.write_text(json.dumps(config, indent=2))

    def start(self, timeout: float = 15.0) -> Registry:
        """Start serving and wait until GET /v2/ gets any HTTP answer (401 included)."""
        binary = _tool("docker-registry", "docker-registry")
        if self.running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            self._write_config()
            started = time.monotonic()
            process = ManagedProcess(
                [binary, "serve", self.config_path], self.log_path, name="docker-registry"
            )
            self.process = process

            def answers(process: ManagedProcess = process) -> bool:
                if not process.alive():
                    raise HarnessError(f"docker-registry exited during start-up\n{process.describe()}")
                return self.ping() > 0

            try:
                wait_for(answers, timeout, f"docker-registry on {self.url}/v2/", detail=process.describe)
            except HarnessError:
                process.stop()
                # Someone took the port between free_port() and the bind: pick another.
                if not self._fixed_port and attempt < 2 and "address already in use" in process.log_text():
                    self.port = free_port()
                    continue
                raise
            self.start_seconds = time.monotonic() - started
            return self
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the process; the port and the stored images stay for a later start()."""
        if self.process is not None:
            self.process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would; the port and the stored images stay for a later start()."""
        if self.process is not None:
            self.process.kill()

    def restart(self) -> Registry:
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.alive()

    def log_text(self) -> str:
        return self.process.log_text() if self.process is not None else ""

    def describe(self) -> str:
        return self.process.describe() if self.process is not None else f"registry {self.url} not started"

    def request(
        self,
        method: str,
        path: str,
        *,
        accept: str | None = None,
        with_auth: bool = True,
        timeout: float = 5.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request to the registry (status, headers, body); an HTTP error status is no exception."""
        req = urllib.request.Request(self.url + path, method=method)
        if accept:
            req.add_header("Accept", accept)
        if with_auth and self.auth is not None:
            req.add_header("Authorization", "Basic " + b64encode(self.auth.encode()).decode())
        # No proxy from the environment may stand between a test and its loopback registry.
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if self.ca is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.ca.ssl_context()))
        try:
            with urllib.request.build_opener(*handlers).open(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers.items()), err.read()

    def ping(self) -> int:
        """HTTP status of an anonymous GET /v2/ (200 plain, 401 with auth)."""
        return self.request("GET", "/v2/", with_auth=False, timeout=1.0)[0]

    def manifest_digest(self, repo: str, reference: str) -> str | None:
        """The digest the registry serves for repo:reference, or None if it does not hold it."""
        status, headers, _ = self.request("HEAD", f"/v2/{repo}/manifests/{reference}", accept=MANIFEST_TYPES)
        if status == 404:
            return None
        if status != 200:
            raise HarnessError(f"HEAD {self.url}/v2/{repo}/manifests/{reference}: HTTP {status}")
        return headers.get("Docker-Content-Digest")

    def delete_manifest(self, repo: str, digest: str) -> None:
        """Make the registry stop holding an image (e.g. "the mirror lost it" tests)."""
        status, _, body = self.request("DELETE", f"/v2/{repo}/manifests/{digest}")
        if status != 202:
            raise HarnessError(f"DELETE {repo}@{digest} on {self.url}: HTTP {status} {body!r}")


class RegistryFactory:
    """Starts registries for one test and stops them all (and their certs.d entries) afterwards."""

    USERNAME = "shim-test"
    PASSWORD = "s3cret:with-colon"  # a ':' in the password: `auth` splits at the first colon

    def __init__(self, workdir: Path, ca: CertAuthority, certs_d: CertsDir | None = None) -> None:
        self.workdir = workdir
        self.ca = ca
        self.certs_d = certs_d
        self.registries: list[Registry] = []

    def __call__(
        self,
        *,
        auth: bool | tuple[str, str] = False,
        tls: bool = False,
        trusted: bool = True,
        port: int | None = None,
    ) -> Registry:
        """A started registry. `auth=True` uses USERNAME/PASSWORD; `tls` serves https with the test CA,
        and `trusted` then writes certs.d/<host>/hosts.toml so containerd trusts that CA."""
        username, password = (None, None)
        if auth is True:
            username, password = self.USERNAME, self.PASSWORD
        elif isinstance(auth, tuple):
            username, password = auth
        registry = Registry(
            self.workdir / f"registry-{len(self.registries) + 1}",
            username=username,
            password=password,
            ca=self.ca if tls else None,
            port=port,
        )
        self.registries.append(registry)
        registry.start()
        if tls and trusted and self.certs_d is not None:
            self.certs_d.add_host(registry.host, ca=self.ca.ca_cert)
        return registry

    def close(self) -> None:
        for registry in self.registries:
            registry.stop()
            if self.certs_d is not None:
                self.certs_d.remove_host(registry.host)


class Loopback:
    """A plain-http server of the tests on 127.0.0.1:`port`."""

    port: int

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"


class Blackhole(Loopback):
    """A TCP server on 127.0.0.1 that accepts connections and never sends a byte."""

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._connections: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="blackhole", daemon=True)
        self._thread.start()

    @property
    def accepted(self) -> int:
        return len(self._connections)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            self._connections.append(conn)  # held open, never read from or written to

    def close(self) -> None:
        self._closed.set()
        # shutdown() wakes the thread blocked in accept(); close() alone may not.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=2.0)
        for conn in self._connections:
            conn.close()

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
