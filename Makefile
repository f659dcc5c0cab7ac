# strata: `make demo` runs the walkthrough, `make test` the whole suite. Both first install what is
# missing: Debian packages (apt-get, only when one is absent) and a .venv with the package in it.

SHELL := /bin/bash
# the distribution's interpreter (Debian's is built with PGO and LTO, libpython linked in): it starts
# about 3 ms sooner than a default pyenv build and runs the daemon's code about 15% faster, and engines
# start strata-oci and strata-unionfs per container (`make PYTHON=python3 ...` for another one)
PYTHON ?= /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEB_PACKAGES := python3 python3-venv python3-dev gcc libc6-dev pkg-config libfuse3-dev fuse3 patch \
	libseccomp2 busybox-static skopeo umoci zstd docker-registry uidmap containerd podman conmon fuse-overlayfs \
	nftables passt curl apache2-utils openssl buildah
BENCH_PACKAGES := debootstrap fuse-overlayfs crun bubblewrap strace podman runc
# tests/test_lab.py validates the lab's Vagrantfile with them (`make lab` needs more: vagrant/lab.sh)
TEST_PACKAGES := vagrant vagrant-libvirt
APT_FLAGS ?=
PYTEST_ARGS ?=
# pyfuse3 is built from its source release with the series unionfs/patches/NNNN-*.patch, applied in
# order (each one's header says what it changes, why, and what it needs); the local version label
# says so in `pip list`
PYFUSE3 := 3.5.0
PYFUSE3_PATCHES := $(sort $(wildcard unionfs/patches/*.patch))
PYFUSE3_SRC := build/pyfuse3/pyfuse3-$(PYFUSE3)
PIP := $(BIN)/pip -q --disable-pip-version-check

.PHONY: deps demo test lint bench clean apt-install lab lab-down

deps: $(BIN)/strata
	@# bytecode for strata's own modules, as pip writes it for what it installs: an editable install's
	@# sources are compiled at import, every time where __pycache__ cannot be written (a user's run of a
	@# root's checkout, PYTHONDONTWRITEBYTECODE), and strata-oci and strata-unionfs start per container
	@$(BIN)/python -m compileall -q -j 0 store runner unionfs
	@# rootless strata mounts through /dev/fuse: say so where users cannot open it (root needs nothing)
	@mode=$$(stat -c %a /dev/fuse 2>/dev/null || echo missing); [ "$$mode" = 666 ] || \
		echo "note: /dev/fuse is $$mode: ordinary users cannot run strata (rootless) until it is open to them: chmod 0666 /dev/fuse (Debian's default)"

.stamp-deb: Makefile
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(DEB_PACKAGES)"
	@touch $@

apt-install:
	@missing=""; for p in $(PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_FLAGS) $$missing; \
	fi

$(BIN)/python: | .stamp-deb
	@$(PYTHON) -m venv $(VENV)
	@# builds take setuptools into environments of their own (pyproject.toml's build-system); the copy
	@# venv puts here only adds distutils-precedence.pth, an import in every Python the venv starts
	@# (~1 ms of each strata, strata-oci and strata-unionfs call)
	@$(PIP) uninstall -q -y setuptools

$(VENV)/.pyfuse3-patched: $(PYFUSE3_PATCHES) | $(BIN)/python
	@rm -rf build/pyfuse3 && mkdir -p build/pyfuse3
	@$(PIP) download --no-deps --no-binary pyfuse3 -d build/pyfuse3 pyfuse3==$(PYFUSE3)
	@tar xzf build/pyfuse3/pyfuse3-$(PYFUSE3).tar.gz -C build/pyfuse3
	@for p in $(PYFUSE3_PATCHES); do patch -s -d $(PYFUSE3_SRC) -p1 < $$p || exit 1; done
	@rm -f $(PYFUSE3_SRC)/src/pyfuse3/__init__.c  # Cython writes it again from the patched source
	@SETUPTOOLS_SCM_PRETEND_VERSION=$(PYFUSE3)+strata.11 $(PIP) install --no-deps --force-reinstall $(PYFUSE3_SRC)
	@touch $@

$(BIN)/strata: .stamp-deb pyproject.toml $(VENV)/.pyfuse3-patched
	@# compat mode (setuptools warns that it is transitional): a plain path in a .pth, where the default
	@# editable finder costs every `strata` 20 ms of imports at start
	@$(PIP) install --config-settings editable_mode=compat -e '.[test]'
	@touch $@

demo: deps
	@PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/walkthrough.sh

test: deps lint
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(TEST_PACKAGES)" APT_FLAGS=--no-install-recommends
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: deps
	$(BIN)/ruff check store runner unionfs tests bench
	$(BIN)/ruff format --check store runner unionfs tests bench
	$(BIN)/mypy

bench: deps
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(BENCH_PACKAGES)"
	@$(BIN)/python bench/store_bench.py
	@$(BIN)/python bench/registry_bench.py
	@$(BIN)/python bench/unionfs_bench.py
	@$(BIN)/python bench/mount_bench.py  # a container's union mount: kernel, fuse-overlayfs, strata-unionfs's warm server
	@$(BIN)/python bench/unionfs_ab.py  # the union fs of this tree against the one before fs.py's split
	@$(BIN)/python bench/fuse_requests.py
	@$(BIN)/python bench/daemon_cpu.py
	@$(BIN)/python bench/fuse_floor.py
	@$(BIN)/python bench/runner_bench.py
	@$(BIN)/python bench/start_phases.py  # where a start's milliseconds go, phase by phase (traced)
	@$(BIN)/python bench/build_bench.py  # strata build against buildah bud, fresh and fully cached
	@$(BIN)/python bench/podman_bench.py  # podman run --rm: strata-oci + strata-unionfs against runc + fuse-overlayfs / overlayfs
	@$(BIN)/python bench/oci_verbs.py  # each call podman makes of its runtime: strata-oci against runc
	@$(BIN)/python bench/podman_requests.py  # the FUSE requests of one podman run: strata-unionfs against fuse-overlayfs
	@$(BIN)/python bench/rootless_bench.py

# the test lab (root; vagrant/README.md): two VMs under libvirt, the tests and the two-host walkthrough
# inside, a summary of the checks; lab-down destroys them and stops what lab started
lab:
	@bash vagrant/lab.sh up

lab-down:
	@bash vagrant/lab.sh down

clean:
	rm -rf $(VENV) .stamp-deb build *.egg-info
