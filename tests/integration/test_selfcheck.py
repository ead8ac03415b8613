"""selfcheck, install.sh's test of a node: every module the service imports loads, or one line
says which library version the node lacks."""

from __future__ import annotations

import re
import subprocess
import sys

from image_cri_shim.selfcheck import MODULES, check, failure

GRPC_ON_CENTOS7 = (
    "/lib64/libstdc++.so.6: version `GLIBCXX_3.4.21' not found (required by "
    "/usr/local/lib/image-cri-shim/0.1.0/_internal/grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so)"
)


def test_the_loader_s_words_name_the_library_and_version() -> None:
    assert failure("grpc", ImportError(GRPC_ON_CENTOS7)) == (
        "cannot load grpc: /lib64/libstdc++.so.6: version `GLIBCXX_3.4.21' not found"
    )
    missing = OSError("libstdc++.so.6: cannot open shared object file: No such file or directory")
    assert failure("grpc", missing) == "cannot load grpc: libstdc++.so.6: cannot open shared object file"
    assert failure("yaml", ImportError("No module named 'yaml'\n(more)")) == (
        "cannot load yaml: No module named 'yaml' (more)"
    )


def test_the_first_module_that_fails_is_named() -> None:
    def load(name: str) -> object:
        if name == "image_cri_shim.workers.process":
            raise ImportError(GRPC_ON_CENTOS7)
        return object()

    said = check(load=load)
    assert said is not None and said.startswith("cannot load image_cri_shim.workers.process: ")
    assert "\n" not in said


def test_what_each_process_imports_is_checked() -> None:
    for module in ("image_cri_shim.workers.process", "image_cri_shim.syncer.process", "ssl"):
        assert module in MODULES
    assert check() is None


def test_selfcheck_from_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "image_cri_shim", "selfcheck"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.startswith("ok: "), done.stdout + done.stderr
    usage = subprocess.run(
        [sys.executable, "-m", "image_cri_shim", "--help"], capture_output=True, text=True, timeout=60
    )
    assert re.search(r"selfcheck\s+load every library the service loads", usage.stdout), usage.stdout
