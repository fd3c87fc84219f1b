# Two commands do all set-up on a fresh CPU machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kiln-installed

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
	$(BIN)/python -m pytest tests -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/cpu_zoo.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
