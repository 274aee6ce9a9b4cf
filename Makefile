# Set-up and checks. `make test` and `make demo` need nothing but python3 and a Debian-like
# machine: they build .venv and fetch a regtest bitcoind (unless $BITCOIND is given).
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: install bitcoind test lint demo bench clean

$(INSTALLED): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	@# The checkout on the dev venv's path: `regtest` (the test harness) imports from scripts
	@# anywhere; the installed product has it only as bitcoind_paychan.regtest.
	$(VENV)/bin/python -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_path("purelib"), "paychan-checkout.pth").write_text("$(CURDIR)\n")'
	touch $@

install: $(INSTALLED) bitcoind

bitcoind:
	$(PYTHON) regtest/fetch.py

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The suite runs on TEST_WORKERS processes (pytest-xdist); each starts its own nodes and servers.
TEST_WORKERS ?= 2

test: install lint
	$(VENV)/bin/pytest -n $(TEST_WORKERS)

demo: install
	$(VENV)/bin/paychan demo

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
