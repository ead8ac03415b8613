"""Docker Engine's image records, over its API socket: what `naming` needs to rename an image on a
node whose runtime is cri-dockerd (Docker keeps the records; cri-dockerd reads them).

Three calls, each a local metadata change or read: inspect an image by a name, tag it under
another, and remove one of its names (`noprune`: a name, never the image while another name
holds it). Unversioned paths: every Docker Engine since 20.10 serves them alike.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import httpx

from image_cri_shim.workers.naming.renaming import repository
from image_cri_shim.workers.runtime.records import call_timeout


class DockerError(Exception):
    """Docker Engine answered with an error, or could not be reached."""


@dataclass(frozen=True)
class DockerImage:
    """One image as Docker Engine holds it: its ID and the names that hold it."""

    id: str
    tags: tuple[str, ...]
    digests: tuple[str, ...]

    def digest_of(self, name: str) -> str:
        """The manifest digest Docker recorded for `name`'s repository (empty when none)."""
        for held in self.digests:
            if familiar(repository(held)) == familiar(repository(name)):
                return held.split("@", 1)[1]
        return ""

    def holds(self, name: str) -> bool:
        """Whether `name` (a normalized name, as the shim spells it) is one of the image's names."""
        spelled = {familiar(n) for n in (*self.tags, *self.digests)}
        return familiar(name) in spelled


def familiar(name: str) -> str:
    """Docker reports `docker.io/library/nginx:1` as `nginx:1` and `docker.io/x/y` as `x/y`."""
    if name.startswith("docker.io/library/") and "/" not in name[len("docker.io/library/") :]:
        return name[len("docker.io/library/") :]
    return name.removeprefix("docker.io/")


class DockerImages:
    """Docker Engine's image records, over its API socket at `path` (one pooled client)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._client: httpx.AsyncClient | None = None

    async def _call(self, method: str, url: str, until: float | None) -> tuple[int, bytes]:
        timeout = call_timeout(until, time.monotonic())
        if self._client is None:
            # A local socket: no TLS, so no CA bundle to load (which would take the loop's time).
            transport = httpx.AsyncHTTPTransport(uds=self.path, verify=False)
            self._client = httpx.AsyncClient(transport=transport, base_url="http://docker")
        try:
            response = await self._client.request(method, url, timeout=timeout)
        except httpx.HTTPError as err:
            raise DockerError(f"Docker Engine at {self.path}: {err or type(err).__name__}") from None
        return response.status_code, response.content

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def version(self, until: float | None = None) -> str | None:
        """Docker Engine's version, or None when its socket does not answer."""
        try:
            status, body = await self._call("GET", "/version", until)
        except DockerError:
            return None
        if status != 200:
            return None
        try:
            return str(json.loads(body).get("Version", "?"))
        except ValueError:
            return None

    async def inspect(self, name: str, until: float | None = None) -> DockerImage | None:
        status, body = await self._call("GET", f"/images/{quote(name, safe='/:@')}/json", until)
        if status == 404:
            return None
        if status != 200:
            raise DockerError(_error(status, body))
        data = json.loads(body)
        return DockerImage(
            data["Id"], tuple(data.get("RepoTags") or ()), tuple(data.get("RepoDigests") or ())
        )

    async def tag(self, image_id: str, name: str, until: float | None = None) -> None:
        """Give the image `name` (`repository:tag`); a name held by another image moves here."""
        repo, tag = repository(name), name[len(repository(name)) + 1 :]
        query = urlencode({"repo": repo, "tag": tag})
        status, body = await self._call("POST", f"/images/{quote(image_id, safe=':')}/tag?{query}", until)
        if status not in (200, 201):
            raise DockerError(_error(status, body))

    async def untag(self, name: str, until: float | None = None) -> None:
        """Remove the name `name` (a tag or a digest record) from its image; gone already is fine."""
        status, body = await self._call("DELETE", f"/images/{quote(name, safe='/:@')}?noprune=1", until)
        if status not in (200, 404):
            raise DockerError(_error(status, body))


def _error(status: int, body: bytes) -> str:
    try:
        message = json.loads(body).get("message", "")
    except ValueError:
        message = body[:200].decode("utf-8", "replace")
    return f"Docker Engine answered {status}: {message}"
