# The one entry point for humans and CI. `make help` lists the targets.
#
# Everything Python lives in .venv, created on first use. Three stamp files in .venv record what
# is already done, so `make install` costs nothing when nothing changed:
#   .deps.stamp   requirements/dev.txt is installed        (redone when that file changes)
#   .build.stamp  the extension is built in release mode   (redone when Rust sources change)
#   .bench.stamp  requirements/bench.txt is installed      (redone when that file changes)
# Python sources need no rebuild: maturin develop installs python/ in editable mode.

.DEFAULT_GOAL := help
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# Extra arguments for `make bench`, e.g. `make bench BENCH_ARGS=--quick`.
BENCH_ARGS ?=
# `make soak`: tasks per chaos run, and the seeds to run.
SOAK_TASKS ?= 20000
SOAK_SEEDS ?= 11,12,13

DEPS_STAMP := $(VENV)/.deps.stamp
BUILD_STAMP := $(VENV)/.build.stamp
BENCH_STAMP := $(VENV)/.bench.stamp
RUST_SOURCES := Cargo.toml pyproject.toml $(shell find crates -name Cargo.toml -o -name build.rs -o -path '*/src/*.rs')
MATURIN := VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin

.PHONY: help
help:  ## list the targets
	@echo "usage: make TARGET"
	@awk -F ':.*## ' '/^[a-zA-Z_-]+:.*## / { printf "  %-12s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): requirements/dev.txt | $(VPY)
	$(VPY) -m pip install -r requirements/dev.txt
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(RUST_SOURCES)
	$(MATURIN) develop --release
	touch $@

$(BENCH_STAMP): requirements/bench.txt $(DEPS_STAMP)
	$(VPY) -m pip install -r requirements/bench.txt
	touch $@

.PHONY: install
install: $(BUILD_STAMP)  ## create .venv, install requirements/dev.txt, build the extension (release)

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
test: install  ## run every test: Rust (gilfree-core, without Python), then pytest
	@if cargo nextest --version >/dev/null 2>&1; then \
		echo "cargo nextest run -p gilfree-core --no-tests=warn"; \
		cargo nextest run -p gilfree-core --no-tests=warn; \
		echo "cargo test -p gilfree-core --doc"; \
		cargo test -p gilfree-core --doc; \
	else \
		echo "cargo test -p gilfree-core"; \
		cargo test -p gilfree-core; \
	fi
	$(VPY) -m pytest
	@# The process table after the suite: no worker process of ours may outlive it. Ours are
	@# the ones this checkout's interpreter runs (other checkouts on the machine may be busy).
	@left=$$(pgrep -af '^$(abspath $(VENV))/bin/python[0-9.]* -m gilfree[._]_?worker' || true); \
	if [ -n "$$left" ]; then echo "worker processes left behind:"; echo "$$left"; exit 1; fi; \
	echo "process table: no gilfree worker left"

# --- Free-threaded CPython (make test-ft) ----------------------------------------------------------
# The interpreter: CPython 3.13 configured --disable-gil, built once by the script into a cache
# outside the checkout (GILFREE_FT_CACHE, default ~/.cache/gilfree) and reused from there. Its venv
# is .venv-ft, with requirements/ft.txt (the dev requirements that install there) and the
# extension, built into a target folder of its own so that the 3.11 build stays incremental.
FT_SCRIPT := scripts/build-free-threaded-python.sh
FT_VENV := .venv-ft
FT_VPY := $(FT_VENV)/bin/python
FT_DEPS_STAMP := $(FT_VENV)/.deps.stamp
FT_BUILD_STAMP := $(FT_VENV)/.build.stamp

$(FT_DEPS_STAMP): requirements/ft.txt
	$(FT_VPY) -m pip install -q -r requirements/ft.txt
	touch $@

$(FT_BUILD_STAMP): $(FT_DEPS_STAMP) $(RUST_SOURCES)
	CARGO_TARGET_DIR=target/ft VIRTUAL_ENV=$(abspath $(FT_VENV)) $(FT_VENV)/bin/maturin develop --release
	touch $@

.PHONY: test-ft
test-ft:  ## the suite and the CPU-scaling benchmark on free-threaded CPython 3.13t (built once, cached)
	@# Build or reuse the interpreter; (re)make .venv-ft when it does not run that interpreter.
	@py=$$($(FT_SCRIPT) | tail -n 1); \
	if [ "$$(readlink -f $(FT_VPY) 2>/dev/null)" != "$$(readlink -f "$$py")" ] || \
		! $(FT_VPY) -c '' 2>/dev/null; then \
		echo "creating $(FT_VENV) with $$py"; rm -rf $(FT_VENV); "$$py" -m venv $(FT_VENV); \
	fi
	@# A make of its own, so the stamps are looked at after the venv above may have been remade.
	$(MAKE) --no-print-directory $(FT_BUILD_STAMP)
	$(FT_VPY) -c 'import sys, gilfree; assert not sys._is_gil_enabled(), "the GIL is on"'
	$(FT_VPY) -m pytest
	@left=$$(pgrep -af '^$(abspath $(FT_VENV))/bin/python[0-9.t]* -m gilfree[._]_?worker' || true); \
	if [ -n "$$left" ]; then echo "worker processes left behind:"; echo "$$left"; exit 1; fi; \
	echo "process table: no gilfree worker left"
	$(FT_VPY) -m gilfree bench --only ft --quick

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

.PHONY: lint
lint: lint-rust lint-python  ## every linter, Rust and Python

.PHONY: format
format: $(DEPS_STAMP)  ## format and autofix: cargo fmt, ruff check --fix, ruff format
	cargo fmt --all
	$(VENV)/bin/ruff check --fix
	$(VENV)/bin/ruff format

.PHONY: bench
bench: install $(BENCH_STAMP)  ## benchmarks beside peers -> benchmarks/results/ (BENCH_ARGS=--quick)
	$(VPY) benchmarks/run.py $(BENCH_ARGS)

.PHONY: clean
clean:  ## remove build outputs, caches and install stamps (keeps .venv)
	rm -rf target .pytest_cache .ruff_cache .hypothesis benchmarks/results/*.tmp
	rm -f python/gilfree/_engine*.so $(DEPS_STAMP) $(BUILD_STAMP) $(BENCH_STAMP)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: all
all: format lint test  ## the pre-merge check (test builds through install; loom runs on its own)
