# The README's commands. `make demo` and `make test` run `make setup` first, which is
# idempotent: a second run only checks timestamps and returns in seconds.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Python 3.10 (the pinned detectron2 wheel is cp310): python3.10 on PATH, else pyenv's.
PYTHON310 ?= $(shell \
  if python3.10 -c 'import sys' >/dev/null 2>&1; then echo python3.10; \
  else ls -d $$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)/versions/3.10*/bin/python3.10 \
       2>/dev/null | sort -V | tail -n 1; fi)
DEPS_STAMP := $(VENV)/.deps-installed
PKG_STAMP := $(VENV)/.package-installed
PACKAGE_INPUTS := setup.py $(wildcard hnms/csrc/*) $(wildcard */__init__.py)

.PHONY: setup demo test lint format bench clean

setup: $(PKG_STAMP)

$(PY):
	@test -n "$(PYTHON310)" || { echo "error: Python 3.10 not found. Install it (e.g. 'pyenv install 3.10') or run 'make setup PYTHON310=/path/to/python3.10'."; exit 1; }
	$(PYTHON310) -m venv $(VENV)

$(DEPS_STAMP): requirements/stack.txt requirements/common.txt | $(PY)
	$(PY) -m pip install -q -r requirements/stack.txt -r requirements/common.txt
	touch $@

$(PKG_STAMP): $(DEPS_STAMP) $(PACKAGE_INPUTS)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

# Train the quick Faster R-CNN on synth_shapes_train, evaluate on synth_shapes_val (COCO AP),
# draw predictions into demo_output/.
demo: setup
	$(PY) -m d2kit.demo --output-dir demo_output

test: setup
	$(PY) -m pytest -q tests

CSRC := $(wildcard hnms/csrc/*.h hnms/csrc/*.cpp hnms/csrc/*.cu)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run --Werror $(CSRC)

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $(CSRC)

# Small versions of the cost benchmarks (the full ones, with the training runs behind the
# accuracy tables, are documented in each project's README).
bench: setup
	$(PY) benchmarks/hnms_speed.py --quick
	$(PY) benchmarks/overlap_sampler_cost.py --iters 5 --results-dir output/bench
	$(PY) benchmarks/noisy_anchors_overhead.py --iters 5 --results-dir output/bench

clean:
	rm -rf build demo_output output hnms/_C*.so *.egg-info
