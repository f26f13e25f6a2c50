# Two commands do everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON_BASE ?= $(shell command -v /usr/bin/python3.11 || command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test install system lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

system:
	@scripts/ensure-system.sh

run: install system
	$(PY) manage.py migrate --noinput -v0
	$(PY) manage.py sync_labs
	$(PY) manage.py demo
	$(PY) -m portal.devstack

test: install
	@AISYS_BROWSER_TESTS=1 scripts/ensure-system.sh
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: install system
	$(PY) bench/sandbox_overhead.py
	$(PY) bench/e2e_latency.py
	$(PY) bench/kernels.py --spread
	$(PY) bench/labs.py

clean:
	rm -rf var/staticfiles var/log .pytest_cache
