"""`--dry-run` and `--resolve`: the real checks and the real resolver, run once, printed.

Output is for a person at a terminal: aligned, no secrets (user names only), and the same
code paths the worker uses, so what it says is what the service would do.
"""

from __future__ import annotations

import asyncio
import sys

from image_cri_shim import logs
from image_cri_shim.config import Config, ConfigError, load, resolve_cri
from image_cri_shim.reference import ReferenceError, is_image_id, parse
from image_cri_shim.workers.registry import Answer, RegistryClient, node_platform
from image_cri_shim.workers.resolver import Resolver
from image_cri_shim.workers.server import runtime_version
from image_cri_shim.workers.upstream import Upstream


def _load(path: str) -> Config | None:
    try:
        config = load(path)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return None
    logs.setup("cli", debug=False)
    logs.register_config_secrets(r.password for r in config.registries)
    return config


def _user(username: str) -> str:
    return f"user {username}" if username else "anonymous"


def dry_run(path: str) -> int:
    config = _load(path)
    if config is None:
        return 1
    return asyncio.run(_dry_run(config))


async def _dry_run(config: Config) -> int:
    print(f"config {config.path}: valid")
    for warning in config.warnings:
        print(f"  warning: {warning}")
    print(f"  shim socket  {config.shim}")
    try:
        cri = resolve_cri(config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    upstream = Upstream(cri, config.timeout)
    try:
        runtime = runtime_version(upstream, timeout=5.0)
    finally:
        upstream.close()
    print(f"  cri          {cri}: {runtime or 'no answer'}")
    node = node_platform()
    clients = [RegistryClient(r, node) for r in config.registries]
    try:
        probes = await asyncio.gather(*(c.ping() for c in clients))
    finally:
        for client in clients:
            await client.aclose()
    print(f"  registries   (in the order they are tried; platform {node})")
    for i, (registry, probe) in enumerate(zip(config.registries, probes, strict=True), 1):
        verdict = "ok" if probe.answer is Answer.FOUND else str(probe)
        who = _user(registry.username)
        print(f"    {i}. {registry.url}  priority {registry.priority}  {who}  /v2/: {verdict}")
    if runtime is None:
        print(f"image-cri-shim: the container runtime at {cri} does not answer Version", file=sys.stderr)
        return 1
    return 0


def resolve(path: str, image: str) -> int:
    config = _load(path)
    if config is None:
        return 1
    return asyncio.run(_resolve(config, image))


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
        decision = await Resolver(config.registries, clients, config.cache).probe(ref)
    finally:
        for client in clients.values():
            await client.aclose()
    print(f"image     {ref}")
    if decision.target is None:
        print("target    unchanged (no configured registry holds it; pulled as asked)")
    else:
        registry = decision.target.registry
        print(f"target    {decision.target.reference}" + ("" if decision.rewritten else " (unchanged)"))
        print(f"registry  {registry.url} (priority {registry.priority})")
        print(f"user      {registry.username or '(anonymous)'}")
    print("candidates")
    for candidate, probe in decision.answers:
        print(f"  {candidate.reference}  {probe}")
    return 0
