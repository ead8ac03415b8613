"""Debian userlands for tests that need another distribution's libraries or daemons.

A root is made once with `debootstrap --variant=minbase` and cached outside the work tree, keyed by
suite and package list, so a second run costs nothing. A missing root is built, never skipped.
A root of another architecture (`arch="arm64"`) needs qemu-user registered with binfmt_misc
(packaging/emulation.py); its programs, and the programs they exec, then run under emulation.

`chrooted` turns a command into one that runs inside a root, in a private mount namespace of its
own (`unshare --mount`, no fork: the pid is the command's own, so a test stops it by that pid).
/proc, /sys, /dev, a tmpfs /run and /tmp, and the directories the test names are mounted in that
namespace only; they vanish with the process, so no mount outlives a test, whatever kills it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from .processes import HarnessError

CACHE = Path(os.environ.get("IMAGE_CRI_SHIM_ROOTS", "/var/cache/image-cri-shim-tests/roots"))
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
BUILD_TIMEOUT = 1200.0


def root_path(suite: str, packages: Sequence[str] = (), arch: str | None = None) -> Path:
    """Where the root for `suite` with `packages` is cached; `arch`: Debian's name, default this machine's."""
    key = hashlib.sha256(" ".join(sorted(packages)).encode()).hexdigest()[:10]
    return CACHE / (f"{suite}-{arch}-{key}" if arch else f"{suite}-{key}")


def debian_root(suite: str, packages: Sequence[str] = (), arch: str | None = None) -> Path:
    """A Debian `suite` userland with `packages`, built on first use (a few minutes, several
    under emulation) and cached."""
    root = root_path(suite, packages, arch)
    if (root / ".complete").exists():
        return root
    if shutil.which("debootstrap") is None:
        raise HarnessError("debootstrap is not on PATH (Debian: apt-get install debootstrap)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second test run waits for the first one's build
        if (root / ".complete").exists():
            return root
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        argv = ["debootstrap", "--variant=minbase"] + ([f"--arch={arch}"] if arch else [])
        if packages:
            argv.append("--include=" + ",".join(packages))
        argv += [suite, str(partial), MIRROR]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"debootstrap {suite} took over {BUILD_TIMEOUT:g}s") from exc
        if done.returncode != 0:
            raise HarnessError(f"debootstrap {suite} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        (partial / ".complete").write_text(" ".join(argv) + "\n")
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
    return root


def chrooted(
    root: Path,
    argv: Sequence[str | os.PathLike[str]],
    binds: Iterable[Path] = (),
    writable: Path | None = None,
) -> list[str]:
    """`argv` run inside `root`, with each of `binds` mounted at the same path (read-write).
    Arguments appended to the returned list reach the command after `argv`.

    Binds under /tmp and /run land in the namespace's own tmpfs, so the cached root gains no
    directories for them; other binds get their mount point created in the root. With
    `writable`, the root is an overlay whose changes go to that directory (kept between calls
    with the same one, one call at a time), so the cached root itself stays as debootstrap made it.
    """
    steps = ["set -e", f"r={shlex.quote(str(root))}", "mount --make-rprivate /"]
    if writable is not None:
        layer = shlex.quote(str(writable))
        steps += [
            f"mkdir -p {layer}/upper {layer}/work {layer}/merged",
            f'mount -t overlay overlay -o "lowerdir=$r,upperdir={layer}/upper,workdir={layer}/work"'
            f" {layer}/merged",
            f"r={layer}/merged",
        ]
    else:
        # the root a mount point of its own: runc inside sets the propagation of "/", which a
        # plain directory has not (EINVAL); an overlay is one already
        steps.append('mount --bind "$r" "$r"')
    steps += [
        'mount -t proc proc "$r/proc"',
        'mount --rbind /sys "$r/sys"',
        'mount --rbind /dev "$r/dev"',
        'mount -t tmpfs tmpfs "$r/run"',
        'mount -t tmpfs tmpfs "$r/tmp"',
    ]
    for path in binds:
        target = shlex.quote(str(path))
        kind = "-d" if Path(path).is_dir() else "-f"
        make = (
            f'mkdir -p "$r"{target}'
            if kind == "-d"
            else f'mkdir -p "$(dirname "$r"{target})"; touch "$r"{target}'
        )
        steps += [make, f'mount --bind {target} "$r"{target}']
    command = " ".join(shlex.quote(str(part)) for part in argv)
    steps.append(f'exec chroot "$r" {command} "$@"')
    return ["unshare", "--mount", "sh", "-c", "\n".join(steps), "chrooted"]


def glibc_version(root: Path) -> str:
    """The root's glibc version, e.g. "2.31", read off its libc by the root's own ldd."""
    done = subprocess.run(chrooted(root, ["ldd", "--version"]), capture_output=True, text=True, timeout=60)
    if done.returncode != 0 or not done.stdout:
        raise HarnessError(f"ldd --version in {root} failed:\n{done.stderr}")
    return done.stdout.splitlines()[0].split()[-1]
