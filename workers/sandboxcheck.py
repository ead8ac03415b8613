"""`--dry-run`'s sandbox line: which sandbox image the worker would keep, whether the node holds
it, and where it would be pulled from now — the worker's own code (`keeper.ask_runtime`, the
resolver), run once."""

from __future__ import annotations

import grpc

from image_cri_shim.config import Config
from image_cri_shim.protos import cri_pb2 as cri
from image_cri_shim.reference import parse
from image_cri_shim.workers.lookup.client import RegistryClient, node_platform
from image_cri_shim.workers.lookup.decisions import outcome, refusal
from image_cri_shim.workers.lookup.plan import Planner
from image_cri_shim.workers.lookup.resolver import Resolver
from image_cri_shim.workers.runtime.calls import unary_call
from image_cri_shim.workers.runtime.sandbox import UNKNOWN
from image_cri_shim.workers.runtime.upstream import Upstream
from image_cri_shim.workers.serve.keeper import ASK_TIMEOUT, V1, ask_runtime


async def sandbox_lines(config: Config, upstream: Upstream) -> list[str]:
    """The lines, for a runtime that answers Version."""
    channel = upstream.channel
    try:
        known = await ask_runtime(
            unary_call(channel, f"{V1}.RuntimeService/Status"),
            unary_call(channel, f"{V1}.RuntimeService/Version"),
            config.sandbox_image,
        )
        if known is None:
            return [UNKNOWN]
        request = cri.ImageStatusRequest(image=cri.ImageSpec(image=known.image)).SerializeToString()
        answer = await unary_call(channel, f"{V1}.ImageService/ImageStatus")(request, timeout=ASK_TIMEOUT)
    except grpc.RpcError as err:
        return [f"the runtime did not answer: {err.details() or err.code().name}"]
    present = bool(cri.ImageStatusResponse.FromString(answer).image.id)
    lines = [
        f"{known.image}  (from {known.source})",
        "on the node" if present else "absent: the shim pulls it",
    ]
    lines.append(await _source(config, known.image))
    return lines


async def _source(config: Config, image: str) -> str:
    """Where a pull of it would go now."""
    ref = parse(image)
    node = node_platform()
    clients = {r.domain: RegistryClient(r, node) for r in config.registries}
    try:
        resolver = Resolver(Planner(config.registries), clients, config.cache, upstream=config.upstream)
        decision = await resolver.probe(ref)
    finally:
        for client in clients.values():
            await client.aclose()
    fate = outcome(decision, config.registries, config.upstream)
    if fate == "rewritten" and decision.target is not None:
        registry = decision.target.registry
        who = f"user {registry.username}" if registry.username else "anonymous"
        return f"from {decision.target.reference}  ({registry.url}, {who})"
    if fate == "refused":
        return f"from nowhere: {refusal(decision)}"
    return f"as asked, from {ref.domain}: no configured registry holds it ({decision.reason()})"
