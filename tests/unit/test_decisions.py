"""What a decision is and means (`workers/lookup/decisions.py`): pure tables, no sockets."""

from __future__ import annotations

import pytest

from image_cri_shim import config, reference
from image_cri_shim.workers.lookup.decisions import (
    Answer,
    Decision,
    Outcome,
    Probe,
    after_failure,
    as_asked,
    choose,
    expiry,
    failed_pull,
    next_source,
    outcome,
    past,
    shown,
)
from image_cri_shim.workers.lookup.plan import plan
from image_cri_shim.workers.pull.failures import Cause, Verdict

CONFIG = config.parse(
    "registries:\n"
    "  - {address: http://a.test, priority: 300}\n"
    "  - {address: http://b.test, priority: 200}\n"
    "  - {address: http://c.test, priority: 100}\n",
    "t.yaml",
)
NGINX = reference.parse("nginx:1.27")
A, B, C = plan(NGINX, CONFIG.registries)

F, N, P, D = Answer.FOUND, Answer.NOT_FOUND, Answer.NO_PLATFORM, Answer.DENIED
T, U, S = Answer.THROTTLED, Answer.UNREACHABLE, Answer.SKIPPED


def decided(*answers: Answer) -> Decision:
    return choose(NGINX, ((c, Probe(a)) for c, a in zip((A, B, C), answers, strict=False)))


@pytest.mark.parametrize(
    ("answers", "target", "degraded"),
    [
        ((F, F, F), "a.test", False),
        ((N, F, F), "b.test", False),
        ((P, D, F), "c.test", False),
        ((U, F, N), "b.test", True),  # a better candidate could not be asked
        ((S, T, F), "c.test", True),
        ((F, U, U), "a.test", False),  # what comes after the target does not matter
        ((N, F, S), "b.test", False),
        ((D, P, N), None, False),
        ((N, U, N), None, True),
        ((), None, False),
    ],
)
def test_choose_takes_the_first_holder_in_plan_order(
    answers: tuple[Answer, ...], target: str | None, degraded: bool
) -> None:
    decision = decided(*answers)
    assert (decision.target.registry.domain if decision.target else None) == target
    assert decision.degraded is degraded
    assert [p.answer for _, p in decision.answers] == list(answers), "every answer is kept"


BACKOFF = {"a.test": 5.0, "b.test": 20.0, "c.test": 0.0}


@pytest.mark.parametrize(
    ("answers", "lives"),
    [
        ((F,), 3600.0),  # found, nothing before it missing: imageCacheTTL
        ((N, N, N), 30.0),  # nobody holds it: negativeCacheTTL
        ((U, F), 5.0),  # until the registry that was down is asked again
        ((U, T, F), 5.0),  # the first of them to be asked again
        ((S, U, N), 5.0),
        ((N, T, N), 20.0),
        ((N, N, U), 0.0),  # c.test is asked again at once
    ],
)
def test_expiry(answers: tuple[Answer, ...], lives: float) -> None:
    assert expiry(decided(*answers), 100.0, 3600.0, 30.0, BACKOFF.__getitem__) == 100.0 + lives


def test_a_long_backoff_is_capped_by_the_negative_ttl() -> None:
    assert expiry(decided(U, F), 0.0, 3600.0, 30.0, lambda _domain: 600.0) == 30.0


@pytest.mark.parametrize(
    ("cause", "answer"),
    [
        (Cause.NOT_FOUND, Answer.NOT_FOUND),
        (Cause.BAD_CONTENT, Answer.NOT_FOUND),
        (Cause.DENIED, Answer.DENIED),
        (Cause.CONNECTION, Answer.UNREACHABLE),
        (Cause.SERVER_ERROR, Answer.UNREACHABLE),
        (Cause.THROTTLED, Answer.UNREACHABLE),
    ],
)
def test_a_failed_pull_is_the_candidates_answer(cause: Cause, answer: Answer) -> None:
    assert failed_pull(Verdict(cause, "it broke")) == Probe(answer, "pull failed: it broke")


def test_after_failure_puts_the_failed_pull_first_and_degrades_on_a_down_registry() -> None:
    probed = choose(NGINX, [(B, Probe(N)), (C, Probe(F))])
    missing = after_failure(A, Verdict(Cause.NOT_FOUND, "blob missing"), probed)
    assert missing.target == C and not missing.degraded
    assert [(c.registry.domain, p.answer) for c, p in missing.answers] == [
        ("a.test", N),
        ("b.test", N),
        ("c.test", F),
    ]
    down = after_failure(A, Verdict(Cause.CONNECTION, "reset"), probed)
    assert down.target == C and down.degraded, "decide again once a.test is asked again"


def test_past_says_whether_a_decision_already_points_past_the_failed_pulls() -> None:
    through_a = decided(F)
    assert not past(through_a, frozenset({"a.test"}))
    assert past(through_a, frozenset({"b.test"}))
    assert past(decided(N, N, N), frozenset({"a.test"}))


OWN = config.parse(
    "address: https://registry.company.com\nregistries: [{address: backup.company.com, priority: 100}]\n",
    "t.yaml",
)


def own_decision(image: str, holder: int | None) -> Decision:
    ref = reference.parse(image)
    candidates = plan(ref, OWN.registries)
    asked = candidates[: (holder or 0) + 1]
    return choose(ref, [(c, Probe(F if i == holder else N)) for i, c in enumerate(asked)])


@pytest.mark.parametrize(
    ("image", "holder", "upstream", "fate"),
    [
        ("nginx:1.27", 0, False, "rewritten"),
        ("nginx:1.27", 1, True, "rewritten"),
        ("nginx:1.27", None, True, "unchanged"),
        ("nginx:1.27", None, False, "refused"),
        # the image's own registry is configured: pulled as asked, never refused
        ("registry.company.com/app:1", 0, False, "unchanged"),
        ("registry.company.com/app:1", None, False, "unchanged"),
        ("registry.company.com/app:1", 1, False, "rewritten"),
    ],
)
def test_outcome(image: str, holder: int | None, upstream: bool, fate: Outcome) -> None:
    assert outcome(own_decision(image, holder), OWN.registries, upstream) == fate


def test_the_log_line_says_where_the_pull_goes() -> None:
    rewritten = own_decision("nginx:1.27", 0)
    assert shown(rewritten, "rewritten") == {
        "target": reference.parse("registry.company.com/library/nginx:1.27"),
        "registry": "registry.company.com",
    }
    own = own_decision("registry.company.com/app:1", 0)
    assert shown(own, "unchanged") == {"target": "unchanged"}
    assert shown(own_decision("nginx:1.27", None), "refused") == {"target": "refused (upstream: false)"}


def test_where_a_pull_goes_after_a_failover() -> None:
    none = own_decision("nginx:1.27", None)
    assert next_source(own_decision("nginx:1.27", 1), "rewritten", frozenset()) == (
        reference.parse("backup.company.com/library/nginx:1.27")
    )
    assert next_source(none, "refused", frozenset()) == "none (upstream: false)"
    assert next_source(none, "unchanged", frozenset({"registry.company.com"})) == (
        "docker.io/library/nginx:1.27 (unchanged)"
    )
    own = own_decision("registry.company.com/app:1", None)
    assert next_source(own, "unchanged", frozenset({"registry.company.com"})) == (
        "none (every candidate failed)"
    )


@pytest.mark.parametrize(
    ("image", "upstream", "allowed"),
    [
        ("nginx:1.27", True, True),
        ("nginx:1.27", False, False),
        ("registry.company.com/app:1", False, True),  # its own registry is a configured one
    ],
)
def test_as_asked_is_what_refusals_and_undecided_pulls_ask(image: str, upstream: bool, allowed: bool) -> None:
    source = reference.parse(image)
    assert as_asked(source, OWN.registries, upstream) is allowed
    nothing = choose(source, ())
    assert (outcome(nothing, OWN.registries, upstream) == "refused") is not allowed
