# InfraFabric: every target sets itself up, so on a fresh machine with Python 3.11
# `make run` and `make test` are the only commands needed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint bench clean redis etcd prometheus chromium

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "InfraFabric needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The main job: a fabric server on embedded SQLite and a demo swarm of agent processes;
# the server keeps running afterwards (Ctrl-C stops it).
run: setup
	$(BIN)/ifab swarm

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# The scale-out tests start a real Redis: installed from Debian when it is missing.
redis:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (Debian package) for the scale-out tests"; \
	  (apt-get install -y -qq redis-server >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null)) ; }
	@command -v redis-server >/dev/null || { echo "redis-server is missing: apt-get install redis-server" >&2; exit 1; }

# The monitoring tests run promtool and a real Prometheus: Debian's, when missing.
prometheus:
	@command -v promtool >/dev/null || { \
	  echo "installing prometheus (Debian package) for the monitoring tests"; \
	  (apt-get install -y -qq prometheus >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq prometheus >/dev/null)) ; }
	@command -v promtool >/dev/null || { echo "promtool is missing: apt-get install prometheus" >&2; exit 1; }

# The dashboard tests drive Debian's headless Chromium (never a downloaded browser).
chromium:
	@command -v chromium >/dev/null || { \
	  echo "installing chromium (Debian package) for the dashboard tests"; \
	  (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)) ; }
	@command -v chromium >/dev/null || { echo "chromium is missing: apt-get install chromium" >&2; exit 1; }

test: lint redis prometheus chromium
	$(BIN)/python -m pytest

# The scale-out bench compares with etcd (the original design's choice) if it installs.
etcd:
	@command -v etcd >/dev/null || (apt-get install -y -qq etcd-server >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null 2>&1)) || \
	  echo "etcd-server did not install: the bench skips its comparison"

bench: setup redis etcd chromium
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
