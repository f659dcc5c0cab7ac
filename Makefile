# strata: `make demo` runs the walkthrough, `make test` the whole suite. Both first install what is
# missing: Debian packages (apt-get, only when one is absent) and a .venv with the package in it.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEB_PACKAGES := python3 python3-venv python3-dev gcc pkg-config libfuse3-dev fuse3 \
	busybox-static skopeo umoci zstd
BENCH_PACKAGES := debootstrap fuse-overlayfs crun bubblewrap strace
PYTEST_ARGS ?=

.PHONY: deps demo test lint bench clean apt-install

deps: $(BIN)/strata

.stamp-deb: Makefile
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(DEB_PACKAGES)"
	@touch $@

apt-install:
	@missing=""; for p in $(PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(BIN)/strata: .stamp-deb pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	@# compat mode (setuptools warns that it is transitional): a plain path in a .pth, where the default
	@# editable finder costs every `strata` 20 ms of imports at start
	@$(BIN)/pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e '.[test]'
	@touch $@

demo: deps
	@PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/walkthrough.sh

test: deps lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: deps
	$(BIN)/ruff check store runner unionfs tests bench
	$(BIN)/mypy

bench: deps
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(BENCH_PACKAGES)"
	@$(BIN)/python bench/store_bench.py
	@$(BIN)/python bench/unionfs_bench.py
	@$(BIN)/python bench/fuse_requests.py
	@$(BIN)/python bench/runner_bench.py

clean:
	rm -rf $(VENV) .stamp-deb build *.egg-info
