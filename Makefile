# InfraFabric: every target sets itself up, so on a fresh machine with Python 3.11
# `make run` and `make test` are the only commands needed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint bench clean redis etcd prometheus chromium runbook coturn

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "InfraFabric needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,webrtc]'
	@touch $(STAMP)

# The main job: a fabric server on embedded SQLite and a demo swarm of agent processes;
# the server keeps running afterwards (Ctrl-C stops it).
run: setup
	$(BIN)/ifab swarm

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# $(call need,COMMAND,PACKAGE,WHAT FOR): install Debian's PACKAGE when COMMAND is missing.
need = @command -v $(1) >/dev/null || { \
	  echo "installing $(2) (Debian package) $(3)"; \
	  (apt-get install -y -qq $(2) >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq $(2) >/dev/null)) ; }; \
	command -v $(1) >/dev/null || { echo "$(1) is missing: apt-get install $(2)" >&2; exit 1; }

# The scale-out tests start a real Redis.
redis:
	$(call need,redis-server,redis-server,for the scale-out tests)

# The monitoring tests run promtool and a real Prometheus.
prometheus:
	$(call need,promtool,prometheus,for the monitoring tests)

# The dashboard tests drive Debian's headless Chromium (never a downloaded browser).
chromium:
	$(call need,chromium,chromium,for the dashboard tests)

# The mesh tests relay WebRTC through a real TURN server.
coturn:
	$(call need,turnserver,coturn,for the mesh tests)

# The runbook's tests check its systemd unit and run its Caddy site (TLS in front).
runbook:
	$(call need,systemd-analyze,systemd,for the runbook tests)
	$(call need,caddy,caddy,for the runbook tests)

test: lint redis prometheus chromium runbook coturn
	$(BIN)/python -m pytest

# The scale-out bench compares with etcd (the original design's choice) if it installs.
etcd:
	@command -v etcd >/dev/null || (apt-get install -y -qq etcd-server >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null 2>&1)) || \
	  echo "etcd-server did not install: the bench skips its comparison"

# make bench ONLY="claims witness": some parts only (python bench/run.py --help lists them)
bench: setup redis etcd chromium coturn
	$(BIN)/python bench/run.py $(if $(ONLY),--only $(ONLY))

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
