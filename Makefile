# Two entry points for a fresh CPU machine: `make demo` (the main job, offline) and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip install -q --disable-pip-version-check

.PHONY: install demo test lint bench bench-newest

# torch first, pinned to the CPU build this machine kind ships (an open range pulls GBs of CUDA wheels);
# then the package with the versions it is tested with.
install:
	$(PIP) torch==2.13.0
	$(PIP) -c requirements/constraints.txt -e ".[test]"

demo: install
	$(PYTHON) -m hf_longssm demo --output_dir outputs/demo

test: install
	$(PYTHON) -m pytest -q

lint:
	ruff check . && ruff format --check .

# Every CPU benchmark (12.5-14 min measured on 2 cores; `python benchmarks/run_all.py --plan`), one summary JSON
# (benchmarks/results/summary_pinned.json) and the figures in README.md, benchmarks/README.md, docs/scale_out.md
# and docs/hybrids.md rendered from it.
# mambapy is what the scan benchmark compares with, installed without its dependencies (torch, already here).
bench: install
	$(PIP) --no-deps -r benchmarks/requirements.txt
	$(PYTHON) benchmarks/run_all.py --mode full --env pinned

# The same on the newest releases pyproject.toml allows (torch stays the pinned CPU build, as in CI's `newest`), in a
# venv of its own kept under .cache/ and upgraded on each run; its column joins the tables beside the pinned one.
BENCH_NEWEST := .cache/bench/newest
bench-newest:
	[ -x $(BENCH_NEWEST)/bin/python ] || $(PYTHON) -m venv $(BENCH_NEWEST)
	$(BENCH_NEWEST)/bin/python -m pip install -q --disable-pip-version-check --upgrade --upgrade-strategy eager \
		"$$(grep -E '^torch==' requirements/constraints.txt)" -e ".[test]"
	$(BENCH_NEWEST)/bin/python -m pip install -q --disable-pip-version-check --no-deps -r benchmarks/requirements.txt
	$(BENCH_NEWEST)/bin/python benchmarks/run_all.py --mode full --env newest
