# Two entry points for a fresh CPU machine: `make demo` (the main job, offline) and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip install -q --disable-pip-version-check

.PHONY: install demo test lint

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
