# image-cri-shim: `make test` sets up everything it needs on a fresh Debian machine (as root).

PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
# qemu-user-static: the arm64 bundle's test runs it under emulation (packaging/emulation.py).
APT_PKGS := containerd docker.io docker-registry skopeo apache2-utils openssl binutils shellcheck debootstrap runc containernetworking-plugins busybox-static iproute2 qemu-user-static
STAMP    := $(VENV)/.installed
# make dist: a venv of its own holding the wheel and the build tools, so the frozen program
# takes in the wheel's dependencies and nothing the test venv has besides.
FREEZE   := build/freeze
DIST_TOOLS := 'build>=1.2' 'pyinstaller>=6.10,<7' 'setuptools>=68'
# What packaging/toolchain.py needs to fetch, unpack and build its sources.
DIST_PKGS := binutils dpkg-dev patch perl pkg-config make debian-archive-keyring
# The bundle's architecture, as Go names it: this machine's, or `make dist ARCH=arm64` on x86_64.
# Another architecture's toolchain is cross-compiled, and everything that runs the frozen-to-be
# Python runs under qemu in a Debian root of that architecture (ON_TARGET, packaging/emulation.py).
MACHINE_ARCH := $(patsubst x86_64,amd64,$(patsubst aarch64,arm64,$(shell uname -m)))
# Only from make's command line: some build environments export an ARCH of their own.
ifneq ($(origin ARCH),command line)
ARCH     := $(MACHINE_ARCH)
endif
ifneq ($(ARCH),$(MACHINE_ARCH))
FREEZE   := build/freeze-$(ARCH)
ON_TARGET := $(PYTHON) packaging/emulation.py $(ARCH) --
TOOLCHAIN_ARGS := --arch $(ARCH)
DIST_PKGS += qemu-user-static debootstrap
endif

.PHONY: test test-runtimes demo bench soak reliability docs dist lint typecheck protos system-deps venv clean

test: system-deps venv lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

# The runtime scenarios against real binaries a person supplies (built elsewhere; never in this
# tree): `make test-runtimes CRI_DOCKERD=/path/to/cri-dockerd CRIO=/path/to/crio`. Without one, its
# scenarios run against the stand-in, and each run says which it used.
RUNTIME_TESTS ?= tests/integration/test_docker_naming.py tests/integration/test_crio.py tests/integration/test_failures_provoked.py
test-runtimes: system-deps venv
	IMAGE_CRI_SHIM_CRI_DOCKERD="$(CRI_DOCKERD)" IMAGE_CRI_SHIM_CRIO="$(CRIO)" \
		$(BIN)/pytest -v -s -p no:cacheprovider $(RUNTIME_TESTS) $(PYTEST_ARGS)

# One pull through the shim with a real containerd and registries, explained.
demo: system-deps venv
	$(BIN)/python -m tools.demo

# What the shim costs a node, against containerd directly (writes docs/performance.md).
# `make bench BENCH_FIGURES=1,6,11` runs only those figures and prints their rows.
bench: system-deps venv
	$(BIN)/python -m tools.bench

# Ten minutes of mixed load with reloads, SIGKILLs and ConfigMap churn (the suite runs a minute of it).
soak: system-deps venv
	$(BIN)/python -m tools.soak

# Every scenario that records evidence, run once; writes the table of docs/reliability.md.
reliability: system-deps venv
	$(BIN)/python -m tools.reliability

# The wheel, the sdist and the offline bundle for ARCH (docs/install.md); a bundle of the other
# architecture in dist/ is kept. The freeze venv is made from packaging/toolchain.py's Python
# (glibc 2.17, built once and cached outside the tree) and takes only manylinux2014 wheels
# (packaging/_manylinux.py).
dist:
	@$(MAKE) --no-print-directory system-deps APT_PKGS="$(DIST_PKGS)"
	rm -rf build/lib dist/image_cri_shim-* dist/image-cri-shim-*-linux-$(ARCH) dist/image-cri-shim-*-linux-$(ARCH).tar.gz
	mkdir -p build
	$(PYTHON) packaging/toolchain.py $(TOOLCHAIN_ARGS) > build/toolchain-$(ARCH)
	python=$$(cat build/toolchain-$(ARCH)); [ "$$(readlink -f $(FREEZE)/bin/python)" = "$$(readlink -f $$python)" ] \
		|| { rm -rf $(FREEZE) && $(ON_TARGET) $$python -m venv $(FREEZE); }
	cp packaging/_manylinux.py $(FREEZE)/lib/python3.11/site-packages/
	$(ON_TARGET) $(FREEZE)/bin/pip install -q $(DIST_TOOLS)
	$(ON_TARGET) $(FREEZE)/bin/python -m build -q --no-isolation --outdir dist .
	$(ON_TARGET) $(FREEZE)/bin/pip install -q --force-reinstall --no-deps dist/*.whl
	$(ON_TARGET) $(FREEZE)/bin/pip install -q dist/*.whl
	$(ON_TARGET) $(FREEZE)/bin/python packaging/build.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy image_cri_shim tests tools

# Regenerate the CRI message code from protos/cri.proto (a test fails when it is stale).
protos: venv
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos protos/cri.proto protos/containerd.proto

# Regenerate docs/configuration.md and the table of docs/metrics.md from the code (tests fail when stale).
docs: venv
	$(BIN)/python -m tools.configdoc
	$(BIN)/python -m tools.metricsdoc

system-deps:
	@missing=""; \
	for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
