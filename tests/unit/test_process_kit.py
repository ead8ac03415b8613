"""The process kit every process starts with: how it starts, its secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_cri_shim import logs
from image_cri_shim.config import parse
from image_cri_shim.startup import EX_CONFIG, StartupError, configure, use_config


def test_an_invalid_config_is_one_line_and_exit_78(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("address: http://sealos.hub:5000\ntimeout: soon\n")
    with pytest.raises(StartupError) as caught:
        configure(str(path), "syncer")
    assert caught.value.code == EX_CONFIG
    assert str(caught.value).startswith(f"config {path}: timeout: ") and "\n" not in str(caught.value)


def test_secrets_are_kept_for_the_life_of_the_process() -> None:
    """A password a reload removed may still be in a late line about the old settings."""
    use_config(parse("address: http://sealos.hub:5000\nauth: admin:First-pw-1\n", "c"))
    use_config(parse("address: http://sealos.hub:5000\nauth: admin:Second-pw-2\n", "c"))
    assert logs.redact("First-pw-1 Second-pw-2") == "*** ***"
