# The two entry points of the study (see README.md):
#   make book   — run the study on the embedded default (synthetic atlas, demo profile) and build the book
#   make test   — run the test suite (CI calls this through .ci/run)
# Both create .venv on first use and install the project into it.

PYTHON  ?= python3
VENV    ?= .venv
PROFILE ?= demo
# torch is not pinned in pyproject.toml (users get their platform's build); the install step pins the build
# that lies on the project's machines. Elsewhere: make TORCH="torch torchvision" ...
TORCH   ?= torch==2.14.1 torchvision==0.29.1
BIN      = $(VENV)/bin

.PHONY: venv test test-fast book study clean-book clean-data lab

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

test: venv
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

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
