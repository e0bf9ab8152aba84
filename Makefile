# Two commands for a fresh machine: `make demo` installs and trains the digits demo, `make test` installs and runs
# the test suite (what CI runs). The longer manual route is in README.md "Install".
VENV ?= .venv
PYTHON ?= python3

.PHONY: install demo test

install: $(VENV)/.installed

# torch/torchvision first, pinned to the releases this project's machines keep on local disk (see README "Install").
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/dico train

test: install
	$(VENV)/bin/python -m pytest -q
