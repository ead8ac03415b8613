"""Which directories and config files are open to other users (image_cri_shim/exposure.py)."""

from __future__ import annotations

import pytest

from image_cri_shim.exposure import Place, directory_exposure, secret_exposure


@pytest.mark.parametrize(
    ("owner", "mode", "said"),
    [
        (0, 0o40700, None),
        (0, 0o40755, None),
        (0, 0o41777, "stateDir /s is mode 1777: writable by group and others"),
        (0, 0o40775, "stateDir /s is mode 0775: writable by group"),
        (0, 0o40757, "stateDir /s is mode 0757: writable by others"),
        (1000, 0o40700, "stateDir /s is mode 0700: owned by uid 1000, not root"),
        (
            65534,
            0o40777,
            "stateDir /s is mode 0777: owned by uid 65534, not root, writable by group and others",
        ),
    ],
)
def test_a_directory_only_root_may_change_is_trusted(owner: int, mode: int, said: str | None) -> None:
    assert directory_exposure("stateDir", Place("/s", owner, mode), 0) == said


def test_the_expected_owner_is_the_services_user() -> None:
    assert directory_exposure("socket directory", Place("/run/x", 1000, 0o40755), 1000) is None
    assert directory_exposure("socket directory", Place("/run/x", 0, 0o40755), 1000) == (
        "socket directory /run/x is mode 0755: owned by root, not uid 1000"
    )


@pytest.mark.parametrize(
    ("mode", "secret", "said"),
    [
        (0o100600, True, None),
        (0o100644, False, None),
        (
            0o100640,
            True,
            "config /c.yaml is mode 0640: it holds passwords and is readable by group (chmod 0600)",
        ),
        (
            0o100644,
            True,
            "config /c.yaml is mode 0644: it holds passwords and is readable by group and others"
            " (chmod 0600)",
        ),
        (
            0o100604,
            True,
            "config /c.yaml is mode 0604: it holds passwords and is readable by others (chmod 0600)",
        ),
    ],
)
def test_a_config_with_passwords_readable_by_others_is_said(
    mode: int, secret: bool, said: str | None
) -> None:
    assert secret_exposure(Place("/c.yaml", 0, mode), secret) == said
