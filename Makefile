# `make test` is the one command that sets up a fresh Debian machine and runs the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: test lint deps mosquitto socat systemd-analyze postgresql clean help

help:
	@echo "make test   - create $(VENV), install massgate with its test extra, install Mosquitto, socat, systemd-analyze and PostgreSQL if missing, run pytest"
	@echo "make lint   - ruff and mypy"
	@echo "make clean  - remove $(VENV) and caches"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

deps: $(VENV)/.installed mosquitto socat systemd-analyze postgresql

# apt_install PACKAGE: install a Debian package as root or with password-less sudo.
define apt_install
	echo "$(1) is missing: installing it from Debian's packages"; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "error: cannot install $(1) without root. Run: sudo apt-get install -y $(1)" >&2; exit 1; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "error: no apt-get here. Install $(1) with your package manager." >&2; exit 1; fi; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(1) >/dev/null || \
	{ echo "error: apt-get could not install $(1)" >&2; exit 1; }
endef

# Mosquitto comes from Debian's packages; the tests start their own broker on a free loopback port.
mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then exit 0; fi; \
	$(call apt_install,mosquitto); \
	if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then \
	  $$SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true; fi

# socat joins two pseudo-terminals into a virtual RS-485 cable for the RTU tests.
socat:
	@if command -v socat >/dev/null 2>&1; then exit 0; fi; \
	$(call apt_install,socat)

# systemd-analyze rates the unit's hardening and checks its syntax (tests/test_systemd_unit.py).
systemd-analyze:
	@if command -v systemd-analyze >/dev/null 2>&1; then exit 0; fi; \
	$(call apt_install,systemd)

# PostgreSQL's server from Debian's packages, for `massgate ingest` (its tests start their own
# server with initdb on a temporary directory and a free loopback port; the system's
# cluster is left stopped).
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then exit 0; fi; \
	$(call apt_install,postgresql); \
	if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then \
	  $$SUDO systemctl disable --now postgresql >/dev/null 2>&1 || true; fi

# Two workers: most tests wait on brokers, slaves and plants in real time, so two of them
# share two cores well (about 5 minutes instead of 9); the slowest are listed at the end.
test: deps
	$(BIN)/python -m pytest --numprocesses 2 --durations 10

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy agent drivers

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
