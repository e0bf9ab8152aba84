# Two commands for a fresh machine: `make demo` installs and trains the digits demo, `make test` installs and runs
# the test suite (what CI runs). The longer manual route is in README.md "Install".
VENV ?= .venv
PYTHON ?= python3
# torch/torchvision first, pinned to the releases this project's machines keep on local disk (see README "Install").
TORCH_PACKAGES ?= torch==2.14.1 torchvision==0.29.1
# TORCH=cpu takes torch's CPU-only build from its own wheel index (no CUDA libraries: for a machine without a GPU);
# TORCH_INDEX=URL takes them from any other wheel index. Neither set: pip's own configuration, as on this machine.
TORCH ?=
TORCH_INDEX ?= $(if $(filter cpu,$(TORCH)),https://download.pytorch.org/whl/cpu)

.PHONY: install demo test

install: $(VENV)/.installed

# torch first, then dico with its [dev] extra: everything, the web demo and the test tools included (pyproject.toml).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH_PACKAGES)
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

# --resume auto: a second `make demo` continues (or, finished, redraws the grid of) the run in results/ instead of
# refusing to overwrite its checkpoints.
demo: install
	$(VENV)/bin/dico train --resume auto

test: install
	$(VENV)/bin/python -m pytest -q
