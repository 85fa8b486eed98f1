# SAMMed developer entry points. `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip install --disable-pip-version-check -q -c SAMMedServer/constraints.txt
# Real test data (never copied into the repo); tests skip with a message where it is absent.
SAMMED_DATA_DIR ?= ../shared/data
export SAMMED_DATA_DIR

.PHONY: venv demo test test-server bench clean

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

test: test-server

bench: venv
	$(VENV)/bin/sammed-server bench --http

clean:
	rm -rf $(VENV) out .pytest_cache
