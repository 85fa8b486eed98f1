# SAMMed developer entry points. `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip install --disable-pip-version-check -q -c SAMMedServer/constraints.txt
# Real test data (never copied into the repo); tests skip with a message where it is absent.
SAMMED_DATA_DIR ?= ../shared/data
export SAMMED_DATA_DIR

.PHONY: venv venv-slicer demo test test-server test-slicer bench clean

venv: $(VENV)/.installed

# torch and torchvision first and pinned together: anything unpinned could swap the torch build.
$(VENV)/.installed: SAMMedServer/pyproject.toml SAMMedServer/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch torchvision
	$(PIP) -e "SAMMedServer[test]"
	touch $@

demo: venv
	$(VENV)/bin/sammed-server demo $(VOLUME) -o out/demo

test-server: venv
	$(VENV)/bin/python -m pytest

# SAMMedSlicer logic tests on Slicer's real MRML (slicer-core wheel, no Slicer app, ~1 GB); the worker they
# start is .venv/bin/sammed-server (override with SAMMED_SERVER=...).
SLICER_VENV := .venv-slicer

venv-slicer: $(SLICER_VENV)/.installed

$(SLICER_VENV)/.installed:
	$(PYTHON) -m venv $(SLICER_VENV)
	$(SLICER_VENV)/bin/pip install --disable-pip-version-check -q 'slicer-core==5.13.*' numpy pytest
	touch $@

test-slicer: venv venv-slicer
	$(SLICER_VENV)/bin/python -m pytest Testing/slicer

test: test-server test-slicer

bench: venv
	$(VENV)/bin/sammed-server bench --http

clean:
	rm -rf $(VENV) $(SLICER_VENV) out .pytest_cache
