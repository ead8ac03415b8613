"""Copied into the freeze venv by `make dist`: pip then takes no wheel newer than manylinux2014.

pip asks this module (PEP 600) whether a manylinux_X_Y wheel suits this machine. The answer is
the bundle's floor, glibc 2.17, not the build machine's glibc: a wheel built for a newer glibc
would raise the floor of every node the bundle is copied to.
"""


def manylinux_compatible(major: int, minor: int, arch: str) -> bool:
    return (major, minor) <= (2, 17)
