# The two entry points of the study (see README.md):
#   make book   — run the study on the embedded default (synthetic atlas, demo profile) and build the book
#   make test   — run the test suite (CI calls this through .ci/run)
# Both create .venv on first use and install into it exactly what the lock file names (versions and hashes).
#
# The environment is locked: $(LOCK) pins every package (the project's dependencies with its dev extra, torch
# and torchvision, pip/setuptools/wheel) with their sha256 hashes, for Linux x86_64 and CPython 3.11.
# pyproject.toml keeps version ranges for library users; the lock is compiled from those ranges with pip-tools:
#   make lock          — re-resolve after a change to pyproject.toml or requirements/pins.in, keeping the
#                        current pins wherever the ranges still allow them
#   make lock-upgrade  — move every pin to the newest version the ranges allow
#   make test-latest   — lock-upgrade, reinstall .venv from the new lock and run the tests against it
#                        (commit the new lock when they pass; `git checkout $(LOCK)` returns to the old one)
# Index locations come from pip's own configuration (pip.conf / PIP_* variables), so none are written into the
# lock. On another platform or Python, install from the ranges instead: pip install -e '.[dev]'.

PYTHON    ?= python3
VENV      ?= .venv
PROFILE   ?= demo
LOCK      ?= requirements/lock-linux-x86_64-py311.txt
LOCK_IN   ?= requirements/pins.in
BIN        = $(VENV)/bin
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes \
	--allow-unsafe --strip-extras --extra dev --no-emit-index-url --no-emit-find-links \
	--output-file $(LOCK) pyproject.toml $(LOCK_IN)

.PHONY: venv test test-fast test-latest lock lock-upgrade book study clean-book clean-data lab

venv: $(VENV)/.installed

# Third-party packages come from the lock alone (--require-hashes: a file whose hash differs is refused); the
# project itself is then installed editable without dependencies, built by the locked setuptools.
# `pip check` fails the install when the lock misses a dependency of pyproject.toml (run `make lock`).
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# every core (pytest-xdist): the suite is mostly single-threaded, so 2 cores take it about twice as fast
PYTEST = $(BIN)/python -m pytest -q -n auto --dist worksteal

test: venv
	$(PYTEST)

test-fast: venv
	$(PYTEST) -m "not slow"

test-latest: lock-upgrade
	$(MAKE) test

# pip-compile comes locked with the dev extra. With a lock that misses a new dependency of pyproject.toml,
# `make venv` stops at `pip check` after installing the lock, pip-tools included: so its failure is ignored here
$(BIN)/pip-compile:
	-$(MAKE) venv

lock: $(BIN)/pip-compile
	$(PIP_COMPILE)

lock-upgrade: $(BIN)/pip-compile
	$(PIP_COMPILE) --upgrade

study: venv
	$(BIN)/cytoclip study run --profile $(PROFILE)

book: study
	$(BIN)/jupyter-book build book --warningiserror --keep-going

lab: venv
	$(BIN)/jupyter lab

clean-book:
	rm -rf book/_build book/experiments book/results

clean-data:
	rm -rf data runs
