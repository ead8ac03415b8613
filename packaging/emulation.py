"""Run another architecture's programs on this machine, for `make dist ARCH=arm64` on x86_64.

The kernel's binfmt_misc hands each foreign ELF program to qemu-user (Debian's qemu-user-static,
registered with the F flag, so the handler works inside a chroot as well). Programs of the target
then run anywhere, and so do the programs they exec. The freeze needs more than that: PyInstaller
finds shared-library dependencies with `ldd` and strips with `strip`, and build.py reads symbol
versions with `objdump`; the build machine's own tools know only its architecture. So the freeze
runs in a Debian root of the target architecture (debootstrap, cached under CACHE like the
toolchain), with the work tree and the cache mounted in at their own paths.

    python3 packaging/emulation.py ARCH               register qemu for ARCH (amd64, arm64), or exit 1
    python3 packaging/emulation.py ARCH -- COMMAND... run COMMAND in the ARCH build root, here
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

CACHE = Path(os.environ.get("IMAGE_CRI_SHIM_BUILD_CACHE", "/var/cache/image-cri-shim-build"))
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
# Go's names (the bundle's) and the kernel's: they differ for x86_64 only.
MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
# What the freeze needs in the root besides minbase: objdump and strip (binutils); ldd is libc-bin's.
SUITE = "bookworm"
PACKAGES = ("binutils",)


def main(argv: Sequence[str]) -> None:
    if not argv or argv[0] not in MACHINES:
        sys.exit(f"emulation: the first argument is the architecture, one of {', '.join(MACHINES)}")
    arch, rest = argv[0], list(argv[1:])
    problem = enable(arch)
    if problem:
        sys.exit(f"emulation: cannot run {arch} programs here: {problem}")
    if not rest:
        return
    if rest[0] != "--" or len(rest) < 2:
        sys.exit("emulation: usage: emulation.py ARCH [-- COMMAND...]")
    # the machine's TLS trust and HOME (pip's configuration and cache, PyInstaller's cache): pip
    # and PyInstaller in the root work as they do outside it
    shared = [Path.cwd(), CACHE, Path("/etc/ssl"), Path.home()]
    command = in_root(build_root(arch), rest[1:], [p for p in shared if p.is_dir()], Path.cwd())
    os.execvp(command[0], command)  # noqa: S606 (the command line of make's recipe)


def foreign(arch: str) -> bool:
    """Whether `arch` is another architecture than this machine's."""
    return MACHINES[arch] != platform.machine()


def handler(machine: str) -> Path:
    return BINFMT / f"qemu-{machine}"


def enabled(machine: str) -> bool:
    """Whether the kernel runs `machine` programs through a registered, enabled qemu handler."""
    try:
        return handler(machine).read_text().splitlines()[0] == "enabled"
    except OSError:
        return False


def enable(arch: str) -> str:
    """Make the kernel run `arch` programs (nothing to do for this machine's); "" when it does,
    else what is missing, in a few words."""
    machine = MACHINES[arch]
    if not foreign(arch) or enabled(machine):
        return ""
    conf = Path(f"/usr/lib/binfmt.d/qemu-{machine}.conf")
    if not conf.exists():
        return f"{conf} is missing (Debian: apt-get install qemu-user-static)"
    if not (BINFMT / "register").exists():
        done = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True, text=True
        )
        if done.returncode != 0:
            said = done.stderr.strip().splitlines()
            return f"mount binfmt_misc: {said[0] if said else done.returncode}"
    if not handler(machine).exists():
        try:
            (BINFMT / "register").write_text(conf.read_text().strip() + "\n")
        except OSError as exc:
            if not handler(machine).exists():  # a concurrent registration is as good
                return f"registering {conf} in {BINFMT}: {exc.strerror}"
    if not enabled(machine):
        try:
            handler(machine).write_text("1\n")
        except OSError as exc:
            return f"enabling {handler(machine)}: {exc.strerror}"
    return ""


def build_root(arch: str) -> Path:
    """The Debian root of `arch` the freeze runs in, made by debootstrap on first use (a few
    minutes under emulation) and kept; `.complete` marks a finished one."""
    key = hashlib.sha256(" ".join([SUITE, arch, *PACKAGES]).encode()).hexdigest()[:10]
    root = CACHE / f"root-{arch}-{SUITE}-{key}"
    if (root / ".complete").exists():
        return root
    if shutil.which("debootstrap") is None:
        sys.exit("emulation: debootstrap is not on PATH (Debian: apt-get install debootstrap)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second build waits for the first one's root
        if not (root / ".complete").exists():
            partial = root.with_name(root.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            argv = ["debootstrap", f"--arch={arch}", "--variant=minbase", f"--include={','.join(PACKAGES)}"]
            argv += [SUITE, str(partial), MIRROR]
            print(f"emulation: building the {arch} root: {' '.join(argv)}", file=sys.stderr, flush=True)
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
                sys.exit(f"emulation: debootstrap {SUITE} for {arch} failed (exit {done.returncode})")
            (partial / ".complete").write_text(" ".join(argv) + "\n")
            shutil.rmtree(root, ignore_errors=True)
            partial.rename(root)
    return root


def in_root(root: Path, argv: Sequence[str], binds: Sequence[Path], cwd: Path) -> list[str]:
    """`argv` run in `root` in `cwd`, in a mount namespace of its own (the mounts vanish with
    it), with each of `binds` mounted at its own path and the machine's DNS settings."""
    steps = [
        "set -e",
        f"r={shlex.quote(str(root))}",
        "mount --make-rprivate /",
        'mount --bind "$r" "$r"',
        'mount -t proc proc "$r/proc"',
        'mount --rbind /dev "$r/dev"',
        'mount -t tmpfs tmpfs "$r/tmp"',
        'touch "$r/etc/resolv.conf"',
        'mount --bind /etc/resolv.conf "$r/etc/resolv.conf"',
    ]
    for path in binds:
        target = shlex.quote(str(path))
        steps += [f'mkdir -p "$r"{target}', f'mount --bind {target} "$r"{target}']
    inner = f"cd {shlex.quote(str(cwd))} && exec " + " ".join(shlex.quote(part) for part in argv)
    steps.append(f'exec chroot "$r" /bin/sh -c {shlex.quote(inner)}')
    return ["unshare", "--mount", "sh", "-c", "\n".join(steps)]


if __name__ == "__main__":
    main(sys.argv[1:])
