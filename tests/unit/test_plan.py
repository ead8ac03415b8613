"""The rewrite plan and what a decision means, without sockets: candidate order, mirrors routing
(whole-component prefixes, checked against an oracle), refusals, and one meaning of a decision for
the pull, the metrics and the log."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from image_cri_shim import config, reference
from image_cri_shim.metrics import WorkerMetrics
from image_cri_shim.workers.lookup.decisions import Answer, Decision, Probe, outcome, refusal
from image_cri_shim.workers.lookup.plan import Excluded, Planner, explain, plan
from image_cri_shim.workers.lookup.resolver import Resolver


def load(text: str) -> config.Config:
    return config.parse(text, "test.yaml")


def test_plan_orders_by_priority_then_address_then_domain() -> None:
    cfg = load(
        """
address: http://offline.example.com
offlinePriority: 500
registries:
  - {address: b.example.com, priority: 500}
  - {address: a.example.com, priority: 500}
  - {address: top.example.com, priority: 900}
  - {address: low.example.com, priority: 10}
"""
    )
    candidates = plan(reference.parse("nginx:1.27"), cfg.registries)
    assert [str(c.reference) for c in candidates] == [
        "top.example.com/library/nginx:1.27",
        "offline.example.com/library/nginx:1.27",
        "a.example.com/library/nginx:1.27",
        "b.example.com/library/nginx:1.27",
        "low.example.com/library/nginx:1.27",
    ]


def test_plan_keeps_path_tag_and_digest() -> None:
    cfg = load("address: http://127.0.0.1:5000\n")
    digest = "sha256:" + "a" * 64
    (candidate,) = plan(reference.parse(f"quay.io/cilium/cilium:v1.15@{digest}"), cfg.registries)
    assert str(candidate.reference) == f"127.0.0.1:5000/cilium/cilium:v1.15@{digest}"
    assert candidate.reference.manifest_ref == digest


# --------------------------------------------------------------------------- routing rules

HARBOR = """
address: https://harbor.company.com
offlinePriority: 800
mirrors:
  docker.io: dockerhub
  docker.io/library: official
  quay.io: quay
  registry.k8s.io/ingress-nginx: ingress
  ghcr.io: ''
"""


def targets(cfg: config.Config, image: str) -> list[str]:
    return [str(c.reference) for c in plan(reference.parse(image), cfg.registries)]


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        # the longest prefix wins
        ("nginx:1.27", "harbor.company.com/official/nginx:1.27"),
        ("bitnami/redis:7", "harbor.company.com/dockerhub/bitnami/redis:7"),
        ("docker.io/library/nginx", "harbor.company.com/official/nginx:latest"),
        ("index.docker.io/library/nginx:1", "harbor.company.com/official/nginx:1"),
        ("quay.io/cilium/cilium:v1.15", "harbor.company.com/quay/cilium/cilium:v1.15"),
        ("registry.k8s.io/ingress-nginx/controller:v1.10", "harbor.company.com/ingress/controller:v1.10"),
        # an empty value keeps the rest of the path as it is
        ("ghcr.io/org/app:v1", "harbor.company.com/org/app:v1"),
        # whole components only
        ("docker.io/library2/x:1", "harbor.company.com/dockerhub/library2/x:1"),
        ("registry.k8s.io/ingress-nginx-extra/x:1", None),
        ("quay.io.example.com/cilium/cilium:1", None),
        ("registry.k8s.io/pause:3.9", None),
        ("ghcr.iox/org/app:1", None),
    ],
)
def test_mirrors_prefix_matching(image: str, expected: str | None) -> None:
    cfg = load(HARBOR)
    assert targets(cfg, image) == ([expected] if expected else [])


@pytest.mark.parametrize(
    ("suffix", "kept"),
    [
        (":v1", ":v1"),
        ("", ":latest"),
        ("@sha256:" + "b" * 64, "@sha256:" + "b" * 64),
        (":v1@sha256:" + "c" * 64, ":v1@sha256:" + "c" * 64),
    ],
)
def test_mirrors_keep_tags_and_digests(suffix: str, kept: str) -> None:
    (candidate,) = plan(reference.parse(f"quay.io/org/app{suffix}"), load(HARBOR).registries)
    assert str(candidate.reference) == f"harbor.company.com/quay/org/app{kept}"
    assert candidate.rule == "quay.io"
    digest = suffix.rpartition("@")[2] if "@" in suffix else None
    assert candidate.reference.manifest_ref == (digest or kept.lstrip(":"))


def test_a_rule_for_one_repository() -> None:
    cfg = load("address: http://h.io\nmirrors: {docker.io/library/nginx: web/nginx, quay.io/org/app: ''}\n")
    assert targets(cfg, "nginx:1") == ["h.io/web/nginx:1"]
    assert targets(cfg, "nginx-extra:1") == []
    # the rule leaves no path at all: no candidate rather than an invalid name
    assert targets(cfg, "quay.io/org/app:1") == []


def test_registries_with_and_without_mirrors_keep_priority_order_and_ties() -> None:
    cfg = load(
        """
address: http://offline.example.com
offlinePriority: 500
mirrors: {docker.io: hub}
registries:
  - {address: b.example.com, priority: 500}
  - {address: a.example.com, priority: 500, mirrors: {docker.io/library: lib}}
  - {address: top.example.com, priority: 900, mirrors: {quay.io: q}}
  - {address: low.example.com, priority: 10}
"""
    )
    assert targets(cfg, "nginx:1.27") == [
        "offline.example.com/hub/library/nginx:1.27",  # the tie at 500: address first...
        "a.example.com/lib/nginx:1.27",  # ...then by domain
        "b.example.com/library/nginx:1.27",
        "low.example.com/library/nginx:1.27",
    ]
    assert targets(cfg, "quay.io/org/app:v1") == [
        "top.example.com/q/org/app:v1",
        "b.example.com/org/app:v1",  # without mirrors: every image, at its own path
        "low.example.com/org/app:v1",
    ]
    assert [c.rule for c in plan(reference.parse("nginx"), cfg.registries)] == [
        "docker.io",
        "docker.io/library",
        None,
        None,
    ]


def test_explain_names_the_registries_that_are_no_candidate() -> None:
    cfg = load(HARBOR + "registries: [{address: backup.company.com, priority: 100}]\n")
    routes = explain(reference.parse("registry.k8s.io/pause:3.9"), cfg.registries)
    assert [type(r).__name__ for r in routes] == ["Excluded", "Candidate"]
    excluded = routes[0]
    assert isinstance(excluded, Excluded)
    assert excluded.why == "no mirrors entry matches registry.k8s.io/pause"
    long_name = "quay.io/" + "/".join(["abcdefghij"] * 22)
    (too_long, _) = explain(reference.parse(long_name), cfg.registries)
    assert isinstance(too_long, Excluded) and "invalid" in too_long.why


def test_planner_plans_each_image_once() -> None:
    cfg = load(HARBOR)
    planner = Planner(cfg.registries)
    ref = reference.parse("nginx:1.27")
    first = planner(ref)
    assert first == plan(ref, cfg.registries)
    assert planner(reference.parse("nginx:1.27")) is first


PREFIXES = [
    "docker.io",
    "docker.io/library",
    "docker.io/lib",
    "quay.io",
    "quay.io/a",
    "quay.io/a/b",
    "r.io/x",
]
NAMES = [
    "docker.io/library/nginx",
    "docker.io/lib/x",
    "docker.io/libraryx/y",
    "quay.io/a/b/c",
    "quay.io/ab/c",
    "quay.io/a/bc",
    "r.io/x",
    "r.io/xy/z",
]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(PREFIXES), st.sampled_from(["", "m", "m/n"]), min_size=1),
    st.sampled_from(NAMES),
)
def test_plan_agrees_with_the_component_oracle(rules: dict[str, str], name: str) -> None:
    """Longest whole-component prefix, value + rest, against a slow obvious implementation."""
    lines = "".join(f"  {key}: '{value}'\n" for key, value in rules.items())
    cfg = load(f"address: http://h.io\nmirrors:\n{lines}")
    parts = name.split("/")
    matching = ["/".join(parts[:n]) for n in range(len(parts), 0, -1) if "/".join(parts[:n]) in rules]
    expected = []
    if matching:
        prefix = matching[0]
        moved = "/".join(p for p in (rules[prefix], name[len(prefix) + 1 :]) if p)
        if moved:
            expected = [f"h.io/{moved}:1"]
    assert targets(cfg, f"{name}:1") == expected


def test_refusal_lists_every_candidate_and_its_answer() -> None:
    cfg = load(HARBOR + "registries: [{address: backup.company.com, priority: 100}]\n")
    ref = reference.parse("nginx:1.27")
    harbor, backup = plan(ref, cfg.registries)
    decision = Decision(
        ref, None, ((harbor, Probe(Answer.NOT_FOUND)), (backup, Probe(Answer.UNREACHABLE))), degraded=True
    )
    assert refusal(decision) == (
        "docker.io/library/nginx:1.27: no configured registry holds it, and upstream: false forbids"
        " pulling it from docker.io: harbor.company.com/official/nginx:1.27: not found;"
        " backup.company.com/library/nginx:1.27: unreachable"
    )
    nothing = Decision(reference.parse("registry.k8s.io/pause:3.9"), None, (), degraded=False)
    assert refusal(nothing).endswith(": no registry is a candidate for it (no mirrors entry matches)")


class _Labels:
    """Records the labels of each count (the metric object's one method the resolver calls)."""

    def __init__(self) -> None:
        self.counted: list[tuple[str, ...]] = []

    def labels(self, *values: str) -> _Labels:
        self.counted.append(values)
        return self

    def inc(self, _amount: float = 1, /) -> None:
        pass


def test_one_meaning_of_a_decision_for_the_pull_the_metrics_and_the_log() -> None:
    cfg = load(
        "address: https://registry.company.com\nupstream: false\n"
        "registries: [{address: backup.company.com, priority: 100}]\n"
    )
    found = Probe(Answer.FOUND)

    def decided(image: str, holder: int | None) -> Decision:
        ref = reference.parse(image)
        candidates = plan(ref, cfg.registries)
        target = None if holder is None else candidates[holder]
        return Decision(ref, target, tuple((c, found) for c in candidates[: (holder or 0) + 1]), False)

    # The image's own registry is configured and holds it: pulled as asked, not rewritten.
    own = decided("registry.company.com/app:1", 0)
    assert own.target is not None and own.target.reference == own.source
    cases = {
        "unchanged": own,
        "rewritten": decided("nginx:1.27", 0),
        "refused": decided("nginx:1.27", None),
    }
    counts = _Labels()
    metrics = WorkerMetrics(recording=False)
    metrics.decisions = counts
    resolver = Resolver(Planner(cfg.registries), {}, cfg.cache, upstream=cfg.upstream, metrics=metrics)
    for expected, decision in cases.items():
        assert outcome(decision, cfg.registries, cfg.upstream) == expected
        resolver._count(decision)
    assert [label for label, _registry in counts.counted] == list(cases)
    assert outcome(decided("registry.company.com/app:1", None), cfg.registries, upstream=False) == "unchanged"
