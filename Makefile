# Two commands on a fresh machine: `make run` (index the sample corpus) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU torch for local/CI installs; on a GPU machine use e.g. `make setup TORCH_SPEC=torch`.
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= configs/local.yaml

.PHONY: setup run search test test-all test-slow lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

run: setup
	$(VENV)/bin/lateline index --config $(CONFIG)

search: setup
	$(VENV)/bin/lateline search --config $(CONFIG) "$(Q)"

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m "slow or not slow"

test-slow: setup
	$(PY) -m pytest -m slow

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf lancedb runs .pytest_cache .ruff_cache
