# The two README commands: `make serve` and `make test`. Each builds the venv it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: serve test lint proto venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/krishiv serve --demo $(ARGS)

lint: $(STAMP)
	$(PY) -m flight_server.proto.generate --check
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

proto: $(STAMP)
	$(PY) -m flight_server.proto.generate

clean:
	rm -rf $(VENV) warehouse
