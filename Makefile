# The two commands a newcomer runs: `make demo` and `make test`.
# Each prepares what it needs: Debian packages when missing (as root), a virtualenv
# with the Python dependencies, then runs.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: test demo lint sysdeps venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mpproxy needs Python >= 3.11 (found %s)" % sys.version.split()[0])'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

sysdeps:
	@scripts/sysdeps.sh

test: sysdeps $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: sysdeps $(STAMP)
	$(VENV)/bin/mpproxy demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
