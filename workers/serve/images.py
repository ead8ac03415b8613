"""The image methods the shim changes: PullImage, ImageStatus, RemoveImage, ListImages.

PullImage asks the resolver where the image really is, rewrites the name and sets that
registry's credentials. The other three answer for the name the caller used: an image pulled
as `registry.company.com/library/nginx:latest` for a caller that asked for `nginx:latest` is
found, listed and removed under `docker.io/library/nginx:latest`, from the runtime's own state
and the name store, never from a registry round trip. How it is named is `naming`'s policy.
What goes as asked: docs/behaviour.md, "Which names are rewritten".

With `upstream: false` (docs/routing.md) a pull that no configured registry can serve is refused
with NOT_FOUND and what each candidate answered, instead of going to the image's own registry.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import TypeAlias, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import DecodeError, Message

from image_cri_shim import logs, reference
from image_cri_shim.config import Registry
from image_cri_shim.metrics import WORKER_OFF, WorkerMetrics
from image_cri_shim.protos import cri_pb2 as cri
from image_cri_shim.reference import Reference
from image_cri_shim.workers.deadline import Deadline
from image_cri_shim.workers.lookup.decisions import Decision, Outcome, as_asked, outcome, refusal
from image_cri_shim.workers.lookup.plan import Candidate, Planner, registry_for
from image_cri_shim.workers.naming.policy import Naming
from image_cri_shim.workers.naming.renaming import foreign_ref, reported
from image_cri_shim.workers.naming.store import NameStore
from image_cri_shim.workers.pull.failover import Decisions, Puller
from image_cri_shim.workers.runtime.upstream import Upstream

log = logs.get("images")

Context: TypeAlias = "grpc.aio.ServicerContext[bytes, bytes]"
M = TypeVar("M", bound=Message)
Handler = Callable[[bytes, Context], Awaitable[bytes]]


async def decode(kind: type[M], raw: bytes, context: Context) -> M:
    try:
        message: M = kind.FromString(raw)
        return message
    except DecodeError as err:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {kind.__name__}: {err}")


def parse_name(image: str) -> Reference | None:
    """The caller's image as a reference, or None for an image ID or an unparsable name."""
    if not image or reference.is_image_id(image):
        return None
    try:
        return reference.parse(image)
    except reference.ReferenceError as err:
        log.warning("passing an unparsable image name through unchanged", image=image, error=err)
        return None


class ImageService:
    """One instance serves both `runtime.v1` and `runtime.v1alpha2` (same field numbers)."""

    def __init__(
        self,
        upstream: Upstream,
        resolve: Callable[[Reference], Awaitable[Decision]],
        planner: Planner,
        names: NameStore,
        pull_upstream: bool = True,
        metrics: WorkerMetrics = WORKER_OFF,
        decisions: Decisions | None = None,
        docker_socket: str | None = None,
    ) -> None:
        self._upstream = upstream
        self._puller = Puller(upstream, decisions, self._outcome)  # failover through the resolver
        self._metrics = metrics
        self._resolve = resolve
        self.naming = Naming(upstream, names, planner, docker_socket)
        self._registries = planner.registries
        self._pull_upstream = pull_upstream  # config `upstream`

    def _outcome(self, decision: Decision) -> Outcome:
        return outcome(decision, self._registries, self._pull_upstream)

    def handlers(self, service: str) -> dict[str, Handler]:
        """Method name -> handler, for one service name (`runtime.v1.ImageService`, …)."""
        methods = {
            "PullImage": self.pull_image,
            "ImageStatus": self.image_status,
            "RemoveImage": self.remove_image,
            "ListImages": self.list_images,
        }
        return {name: functools.partial(handler, f"/{service}/{name}") for name, handler in methods.items()}

    # -- PullImage ------------------------------------------------------------------------------

    async def pull_image(self, method: str, raw: bytes, context: Context) -> bytes:
        deadline = self._upstream.deadline(context)  # the registry probes count against it too
        request = await decode(cri.PullImageRequest, raw, context)
        source = parse_name(request.image.image)
        if source is None:
            return await self._upstream.unary(method, raw, context, deadline)
        own = registry_for(source.domain, self._registries)
        decision = await self._decide(source, context)
        if decision is not None:
            fate = self._outcome(decision)
            if fate == "rewritten" and decision.target is not None:
                return await self._pull_rewritten(
                    method, raw, request, source, decision.target, context, deadline
                )
            if fate == "refused":
                log.debug("pull refused: upstream pulls are off", image=source, why=decision.reason())
                await context.abort(grpc.StatusCode.NOT_FOUND, refusal(decision))
        through = decision.target if decision is not None else None  # the image's own registry
        return await self._pull_unchanged(method, raw, request, source, own, through, context, deadline)

    async def _decide(self, source: Reference, context: Context) -> Decision | None:
        """The resolver's decision; None when it failed and the image may go as asked."""
        try:
            return await self._resolve(source)
        except Exception as err:  # a fault of the shim's own must never fail a pull...
            if not as_asked(source, self._registries, self._pull_upstream):  # ...unless it may not
                log.error("rewrite decision failed, upstream pulls are off", image=source, error=repr(err))
                await context.abort(grpc.StatusCode.UNAVAILABLE, undecided(source))
            log.error("rewrite decision failed, pulling unchanged", image=source, error=repr(err))
            self._metrics.decisions.labels("error", "").inc()
            return None

    async def _pull_rewritten(
        self,
        method: str,
        raw: bytes,
        request: cri.PullImageRequest,
        source: Reference,
        target: Candidate,
        context: Context,
        deadline: Deadline,
    ) -> bytes:
        """Pull the target with its registry's credentials, failing over to the next source when
        that registry fails the pull; name the image as asked after the attempt that succeeded."""
        own = registry_for(source.domain, self._registries)

        def build(candidate: Candidate | None) -> bytes:
            if candidate is None or candidate.reference == source:
                return self._unchanged(raw, request, source, own if candidate is None else candidate.registry)
            attempt = cri.PullImageRequest()
            attempt.CopyFrom(request)
            attempt.image.image = str(candidate.reference)
            set_credentials(attempt, candidate.registry)
            log.debug(
                "pull rewritten",
                image=source,
                target=candidate.reference,
                user=candidate.registry.username or "-",
            )
            return attempt.SerializeToString()

        async with self.naming.pulling(source) as pull:
            await self.naming.held_before(pull, target.reference, deadline.answer_by)
            response, pulled = await self._puller.pull(method, source, target, build, context, deadline)
            if pulled is not None and pulled.reference != source:
                await self.naming.pulled(method, pull, pulled.reference, deadline.answer_by)
            else:
                await self.naming.pulled_directly(source)
        return await self._own_ref(method, response, source, context, deadline)

    async def _own_ref(
        self, method: str, raw: bytes, source: Reference, context: Context, deadline: Deadline
    ) -> bytes:
        """PullImage's `image_ref` never names a registry the caller did not ask for: a runtime that
        answers with the pulled repository's digest (cri-dockerd) has it replaced by the image's
        ID, as the other runtimes give it."""
        response = cri.PullImageResponse.FromString(raw)
        if not foreign_ref(response.image_ref, reported(source)):
            return raw
        status = method.rsplit("/", 1)[0] + "/ImageStatus"

        async def ask(name: str) -> tuple[bool, str]:
            request = cri.ImageStatusRequest(image=cri.ImageSpec(image=name)).SerializeToString()
            image_id = cri.ImageStatusResponse.FromString(
                await self._upstream.unary(status, request, context, deadline)
            ).image.id
            return bool(image_id), image_id

        _, image_id = await self.naming.look(source, ask)
        if not image_id:
            _, image_id = await ask(response.image_ref)
        response.image_ref = image_id or ""
        return response.SerializeToString()

    async def _pull_unchanged(
        self,
        method: str,
        raw: bytes,
        request: cri.PullImageRequest,
        source: Reference,
        own: Registry | None,
        through: Candidate | None,
        context: Context,
        deadline: Deadline,
    ) -> bytes:
        """The pull as asked. Through a target (the image's own registry holds it) a failed pull
        drops that decision, as a failover does: the next pull decides afresh."""
        await self.naming.pulled_directly(source)
        try:
            return await self._upstream.call(
                method, self._unchanged(raw, request, source, own), context, deadline
            )
        except grpc.RpcError as err:
            if through is not None:
                await self._puller.forget(source, through)
            await self._upstream.abort(context, err)

    def _unchanged(
        self, raw: bytes, request: cri.PullImageRequest, source: Reference, own: Registry | None
    ) -> bytes:
        """The request as asked; with the image's own registry's credentials when it is
        configured and the caller sent none."""
        if own is not None and own.has_credentials and not has_credentials(request.auth):
            attached = cri.PullImageRequest()
            attached.CopyFrom(request)
            set_credentials(attached, own)
            log.debug("pull unchanged, registry credentials attached", image=source, user=own.username)
            return attached.SerializeToString()
        log.debug("pull unchanged", image=source)
        return raw

    # -- ImageStatus / ListImages / RemoveImage ----------------------------------------------------
    # Each looks in the runtime's state under the names `naming` says the image may be held under.

    async def image_status(self, method: str, raw: bytes, context: Context) -> bytes:
        deadline = self._upstream.deadline(context)
        request = await decode(cri.ImageStatusRequest, raw, context)
        source = parse_name(request.image.image)
        if source is None:
            forwarded = await self._upstream.unary(method, raw, context, deadline)
            return self._named_status(forwarded, None, request.verbose)
        asked: bytes | None = None  # the runtime's answer to the request as it came
        if self.naming.answers_as_held(request.verbose):
            # kubelet's every check of an image it holds: the request and the answer as they are
            asked = await self._upstream.unary(method, raw, context, deadline)
            if cri.ImageStatusResponse.FromString(asked).image.id:
                return asked
        caller = reported(source)

        async def ask(name: str) -> tuple[bool, bytes]:
            nonlocal asked
            if asked is not None and name == caller:  # the runtime said just now: not under it
                answer, asked = asked, None
                return False, answer
            request.image.image = name
            answer = await self._upstream.unary(method, request.SerializeToString(), context, deadline)
            return bool(cri.ImageStatusResponse.FromString(answer).image.id), answer

        name, answer = await self.naming.look(source, ask)
        if name is None:
            return answer or b""
        if await self.naming.found(method, caller, name, deadline.answer_by):
            _, answer = await ask(caller)  # the runtime holds it under the caller's name now
        return self._named_status(answer or b"", caller, request.verbose)

    async def list_images(self, method: str, raw: bytes, context: Context) -> bytes:
        deadline = self._upstream.deadline(context)
        request = await decode(cri.ListImagesRequest, raw, context)
        source = parse_name(request.filter.image.image) if request.HasField("filter") else None
        if source is None:
            if not request.filter.image.image:  # renamings owed get half the time: the listing follows
                now = time.monotonic()
                await self.naming.pay_owed(method, now + deadline.left(now) / 2)
            response_raw = await self._upstream.unary(method, raw, context, deadline)
            if not self.naming.remembers:
                return response_raw
            response = cri.ListImagesResponse.FromString(response_raw)
            if not request.filter.image.image:
                await self.naming.prune(response)
            return response.SerializeToString() if self.naming.listing(response) else response_raw

        asked, caller = request.filter.image.image, reported(source)

        async def ask(name: str) -> tuple[bool, tuple[bytes, cri.ListImagesResponse]]:
            # the caller's own spelling first: Docker matches a filter against its short names
            request.filter.image.image = asked if name == caller else name
            answer = await self._upstream.unary(method, request.SerializeToString(), context, deadline)
            response = cri.ListImagesResponse.FromString(answer)
            return bool(response.images), (answer, response)

        name, found = await self.naming.look(source, ask)
        if found is None:
            return b""
        answer, response = found
        if name is None:
            return answer
        await self.naming.found(method, reported(source), name, deadline.answer_by)
        return response.SerializeToString() if self.naming.listing(response) else answer

    async def remove_image(self, method: str, raw: bytes, context: Context) -> bytes:
        deadline = self._upstream.deadline(context)
        request = await decode(cri.RemoveImageRequest, raw, context)
        source = parse_name(request.image.image)
        if source is None:
            return await self._upstream.unary(method, raw, context, deadline)
        status_method = method.rsplit("/", 1)[0] + "/ImageStatus"

        async def ask(name: str) -> tuple[bool, cri.ImageStatusResponse]:
            status = cri.ImageStatusRequest(image=cri.ImageSpec(image=name)).SerializeToString()
            answer = await self._upstream.unary(status_method, status, context, deadline)
            found = cri.ImageStatusResponse.FromString(answer)
            return bool(found.image.id), found

        name, found = await self.naming.look(source, ask)
        if name is None or found is None:
            await self.naming.removed(reported(source), ())
            return await self._upstream.unary(method, raw, context, deadline)
        # By the image's ID: every runtime removes by it (cri-dockerd by nothing else: by a name it
        # answers OK and keeps the image), and each removes every name of the image with it.
        request.image.image = found.image.id
        response = await self._upstream.unary(method, request.SerializeToString(), context, deadline)
        names = [*found.image.repo_tags, *found.image.repo_digests]
        log.info("image removed", image=source, id=found.image.id, names=",".join(names) or "-")
        await self.naming.removed(reported(source), names)
        return response

    def _named_status(self, raw: bytes, caller: str | None, verbose: bool) -> bytes:
        if not self.naming.remembers:
            return raw
        response = cri.ImageStatusResponse.FromString(raw)
        return response.SerializeToString() if self.naming.status(response, caller, verbose) else raw


def undecided(source: Reference) -> str:
    """UNAVAILABLE rather than NOT_FOUND: nobody was asked, so kubelet's retry may well succeed."""
    return (
        f"{source}: the shim could not check the configured registries, and upstream: false forbids"
        f" pulling it from {source.domain}; try again"
    )


def has_credentials(auth: cri.AuthConfig) -> bool:
    return bool(auth.username or auth.password or auth.auth or auth.identity_token or auth.registry_token)


def set_credentials(request: cri.PullImageRequest, registry: Registry) -> None:
    """The target registry's configured credentials, or none: the caller's never travel on
    (docs/behaviour.md, "Credentials")."""
    request.ClearField("auth")
    if registry.has_credentials:
        request.auth.username = registry.username
        request.auth.password = registry.password
