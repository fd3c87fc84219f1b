# Two commands do all set-up on a fresh CPU machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kiln-installed
# pytest-xdist workers for `make test` (0: one process); the suite is mostly interpreted Triton
# kernels, one core each, so two workers on the 2-core CI machine roughly halve its time
TEST_WORKERS ?= 2

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/kiln demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests -q -n $(TEST_WORKERS)

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/cpu_zoo.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
