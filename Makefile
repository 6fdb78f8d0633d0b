# `make test` is the one command that sets up a fresh Debian machine and runs the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: test lint deps mosquitto clean help

help:
	@echo "make test   - create $(VENV), install massgate with its test extra, install Mosquitto if missing, run pytest"
	@echo "make lint   - ruff and mypy"
	@echo "make clean  - remove $(VENV) and caches"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

deps: $(VENV)/.installed mosquitto

# Mosquitto comes from Debian's packages; the tests start their own broker on a free loopback port.
mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then exit 0; fi; \
	echo "mosquitto is missing: installing it from Debian's packages"; \
	if [ "$$(id -u)" = 0 ]; then SUDO=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "error: cannot install mosquitto without root. Run: sudo apt-get install -y mosquitto" >&2; exit 1; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "error: no apt-get here. Install the Mosquitto broker (2.x) with your package manager." >&2; exit 1; fi; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto >/dev/null || \
	{ echo "error: apt-get could not install mosquitto" >&2; exit 1; }; \
	if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then \
	  $$SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true; fi

test: deps
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy agent drivers

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
