# The two commands in the README: `make repro` and `make test`. Everything the project needs is
# installed here, so a machine with only Python 3.11 or 3.12 and git is enough (the pinned numpy<2
# and scikit-image 0.24 have no wheels for 3.13).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: repro repo test lint env clean-env

env: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	@# A venv without pip gets it from ensurepip (`uv venv` makes them); where that fails too (what
	@# a failed `python3 -m venv` leaves: Debian without python3-venv) it is made afresh.
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip --upgrade >/dev/null 2>&1 || { \
	  $(PYTHON) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info < (3, 13))' || \
	    { echo "error: Python 3.11 or 3.12 is needed; $(PYTHON) is $$($(PYTHON) -V 2>&1) (make PYTHON=python3.12 ...)"; exit 1; }; \
	  test ! -e $(VENV) || echo "note: $(VENV) has no pip and ensurepip failed there: made afresh"; \
	  rm -rf $(VENV); echo "$(PYTHON) -m venv $(VENV)"; \
	  $(PYTHON) -m venv $(VENV) || \
	    { rm -rf $(VENV); echo "error: $(PYTHON) -m venv failed (Debian/Ubuntu: apt install python3-venv)"; exit 1; }; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -r requirements.txt -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# dvc and `dvc exp` need a git repository with DVC initialised.
repo: env
	test -d .git || (git init -q && git add -A && git -c user.name=denoise -c user.email=denoise@localhost commit -qm "initial import")
	test -d .dvc || $(BIN)/dvc init -q

repro: repo
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# CI runs this: lint first (seconds), then every test.
test: lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

lint: env
	$(BIN)/ruff check src stages tests benchmarks
	$(BIN)/ruff format --check src stages tests benchmarks

clean-env:
	rm -rf $(VENV)
