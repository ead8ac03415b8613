"""`--dry-run` and `--resolve`: the real checks and the real resolver, run once, printed.

Output is for a person at a terminal: aligned, no secrets (user names only), and the same
code paths the worker uses, so what it says is what the service would do.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from image_cri_shim import logs
from image_cri_shim.config import Config, ConfigError, Registry, load
from image_cri_shim.reference import ReferenceError, is_image_id, parse
from image_cri_shim.startup import exposures, resolve_cri
from image_cri_shim.workers.lookup.client import RegistryClient, node_platform
from image_cri_shim.workers.lookup.decisions import Answer, Decision, Probe, outcome, refusal
from image_cri_shim.workers.lookup.plan import Candidate, Excluded, Planner, explain
from image_cri_shim.workers.lookup.resolver import Resolver
from image_cri_shim.workers.lookup.transport import TLSSetupError
from image_cri_shim.workers.naming.policy import described, naming_mode
from image_cri_shim.workers.runtime.dockerapi import DockerImages
from image_cri_shim.workers.runtime.records import Records
from image_cri_shim.workers.runtime.upstream import Upstream
from image_cri_shim.workers.sandboxcheck import sandbox_lines
from image_cri_shim.workers.serve.server import runtime_version


def _load(path: str) -> Config | None:
    try:
        config = load(path)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return None
    logs.setup("cli", debug=False)
    logs.register_secret(*(r.password for r in config.registries))
    return config


def _user(username: str) -> str:
    return f"user {username}" if username else "anonymous"


# More lines for the report from outside the worker's rooms (the ConfigMap check lives with the
# syncer, which alone imports kubernetes): given the config, they return lines to print.
Section = Callable[[Config], list[str]]


def dry_run(path: str, sections: dict[str, Section] | None = None) -> int:
    config = _load(path)
    if config is None:
        return 1
    return _run(_dry_run(config, sections or {}))


def _run(command: Coroutine[Any, Any, int]) -> int:
    """Run a command; the node's TLS settings unusable is one line, as the worker says it."""
    try:
        return asyncio.run(command)
    except TLSSetupError as err:
        print(f"image-cri-shim: {err}", file=sys.stderr)
        return 1


async def _timed(client: RegistryClient) -> tuple[Probe, float]:
    started = time.monotonic()
    probe = await client.ping()
    return probe, time.monotonic() - started


async def _dry_run(config: Config, sections: dict[str, Section]) -> int:
    print(f"config {config.path}: valid")
    for warning in (*config.warnings, *exposures(config)):
        print(f"  warning: {warning}")
    print(f"  shim socket  {config.shim}")
    try:
        cri = resolve_cri(config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    upstream = Upstream(cri, config.timeout)
    try:
        runtime = await runtime_version(upstream, timeout=5.0)
        docker = DockerImages(config.docker_socket)
        mode = await naming_mode(Records(upstream.channel), docker, time.monotonic() + 5.0)
        await docker.close()
        print(f"  cri          {cri}: {runtime or 'no answer'}")
        shown = (
            "not known (the runtime does not answer)"
            if mode is None
            else described(mode, config.docker_socket)
        )
        print(f"  names        {shown}")
        if runtime is not None:
            first, *rest = await sandbox_lines(config, upstream)
            print(f"  sandbox      {first}")
            for line in rest:
                print(f"               {line}")
    finally:
        await upstream.close()
    node = node_platform()
    clients = [RegistryClient(r, node) for r in config.registries]
    try:
        probes = await asyncio.gather(*(_timed(c) for c in clients))
    finally:
        for client in clients:
            await client.aclose()
    print(f"  registries   (in the order they are tried; platform {node})")
    for i, (registry, (probe, took)) in enumerate(zip(config.registries, probes, strict=True), 1):
        verdict = f"ok in {took * 1000:.0f} ms" if probe.answer is Answer.FOUND else str(probe)
        who = _user(registry.username)
        print(f"    {i}. {registry.url}  priority {registry.priority}  {who}  /v2/: {verdict}")
        if registry.mirrors:
            print(f"       mirrors {describe_mirrors(registry)}")
    print(f"  upstream     {'true' if config.upstream else 'false'}: {_UPSTREAM[config.upstream]}")
    for title, section in sections.items():
        first, *rest = section(config) or [""]
        print(f"  {title:<12} {first}")
        for line in rest:
            print(f"               {line}")
    if runtime is None:
        print(f"image-cri-shim: the container runtime at {cri} does not answer Version", file=sys.stderr)
        return 1
    return 0


_UPSTREAM = {
    True: "an image no configured registry holds is pulled as asked",
    False: "an image no configured registry holds is refused with NOT_FOUND",
}


def describe_mirrors(registry: Registry) -> str:
    """`docker.io -> dockerhub, ghcr.io -> ""`: the rules in the order they are tried."""
    return ", ".join(f"{prefix} -> {_shown(path)}" for prefix, path in registry.mirrors)


def _shown(path: str) -> str:
    """A rule's path prefix as the config spells it; the empty one quoted so it is visible."""
    return path or '""'


def resolve(path: str, image: str) -> int:
    config = _load(path)
    if config is None:
        return 1
    return _run(_resolve(config, image))


async def _resolve(config: Config, image: str) -> int:
    if is_image_id(image):
        print(f"{image}: an image ID, passed through unchanged")
        return 0
    try:
        ref = parse(image)
    except ReferenceError as err:
        print(f"{image}: not a valid reference ({err}), passed through unchanged")
        return 0
    node = node_platform()
    clients = {r.domain: RegistryClient(r, node) for r in config.registries}
    try:
        resolver = Resolver(Planner(config.registries), clients, config.cache, upstream=config.upstream)
        decision = await resolver.probe(ref, everyone=True)
    finally:
        for client in clients.values():
            await client.aclose()
    print(f"image     {ref}")
    _print_target(config, decision)
    print(f"registries (in the order they are tried; platform {node})")
    for line in registry_lines(decision, explain(ref, config.registries)):
        print(f"  {line}")
    return 0


def _print_target(config: Config, decision: Decision) -> None:
    fate = outcome(decision, config.registries, config.upstream)
    if decision.target is not None:
        registry = decision.target.registry
        print(f"target    {decision.target.reference}" + ("" if fate == "rewritten" else " (unchanged)"))
        print(f"registry  {registry.url} (priority {registry.priority})")
        print(f"user      {registry.username or '(anonymous)'}")
    elif fate == "refused":
        print("target    none: PullImage fails with NOT_FOUND (upstream: false)")
        print(f"message   {refusal(decision)}")
    elif config.upstream:
        print("target    unchanged (no configured registry holds it; pulled as asked)")
    else:
        print(
            "target    unchanged (no candidate holds it; pulled as asked from its own, configured registry)"
        )


def registry_lines(decision: Decision, routes: tuple[Candidate | Excluded, ...]) -> list[str]:
    """One line per configured registry: its computed reference and answer, or why it is no
    candidate. Pure, so the format is tested without registries."""
    answers = {candidate.registry.domain: probe for candidate, probe in decision.answers}
    lines = []
    for number, route in enumerate(routes, 1):
        if isinstance(route, Excluded):
            lines.append(f"{number}. {route.registry.domain}  no candidate: {route.why}")
            continue
        probe = answers.get(route.registry.domain)
        answer = str(probe) if probe is not None else "not asked"
        rule = f"  [mirrors {route.rule}: {_path(route)}]" if route.rule is not None else ""
        lines.append(f"{number}. {route.reference}  {answer}{rule}")
    return lines


def _path(candidate: Candidate) -> str:
    """The value of the rule that placed `candidate`, as written in the config."""
    return _shown(dict(candidate.registry.mirrors).get(candidate.rule or "", ""))
