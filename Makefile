# SAMMed developer entry points. `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/pip install --disable-pip-version-check -q -c SAMMedServer/constraints.txt
# Real test data (never copied into the repo); tests skip with a message where it is absent.
SAMMED_DATA_DIR ?= $(abspath ../shared/data)
export SAMMED_DATA_DIR

.PHONY: venv venv-slicer venv-view demo test test-long test-server test-install test-slicer test-view bench bench-models bench-slicer fuzz clean

venv: $(VENV)/.installed

# torch and torchvision first and pinned together: anything unpinned could swap the torch build.
$(VENV)/.installed: SAMMedServer/pyproject.toml SAMMedServer/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch torchvision
	$(PIP) -e "SAMMedServer[test,cluster,openvino]"
	touch $@

demo: venv
	$(VENV)/bin/sammed-server demo $(VOLUME) -o out/demo

test-server: venv
	$(VENV)/bin/python -m pytest

# The worker package without this repository's constraints: its minimum versions resolve under python3.9 (Slicer 5.8)
# and python3.12 (Slicer 5.10) (pip --dry-run; from pyenv or PATH, skipped with a message without them), and a
# loose install into a fresh Python 3.11 venv serves /v1/health (torch from a local wheel). Part of test-server too
# (Testing/ is in pytest.ini's testpaths); this target runs it alone.
test-install: venv
	$(VENV)/bin/python -m pytest Testing/install

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

# View tests: a real offscreen Red slice view from trame-slicer (pins its own slicer-core 5.11 + VTK, so its own
# venv), rendered through EGL on Mesa: no GPU or display, but the EGL/Mesa system libraries are installed if absent.
VIEW_VENV := .venv-view
EGL_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri

venv-view: $(VIEW_VENV)/.installed

$(VIEW_VENV)/.installed:
	dpkg -s $(EGL_PACKAGES) >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq $(EGL_PACKAGES))
	$(PYTHON) -m venv $(VIEW_VENV)
	$(VIEW_VENV)/bin/pip install --disable-pip-version-check -q 'trame-slicer[standalone]' numpy pytest
	touch $@

test-view: venv venv-view
	VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow $(VIEW_VENV)/bin/python -m pytest Testing/view

# One embedding cache and one set of exported models for the three suites of a run (else each encodes the sample CT
# and exports the model again), emptied first: every `make test` starts cold, like CI.
TEST_CACHE := $(abspath out/test-cache)

test: venv venv-slicer venv-view
	rm -rf $(TEST_CACHE)
	SAMMED_TEST_CACHE_DIR=$(TEST_CACHE) $(MAKE) test-server test-slicer test-view

# Accuracy comparisons that train for minutes, not in `make test` (marker long; about 15 min on 2 cores): H-SAM and
# MA-SAM against a same-budget decoder-only baseline. See docs/testing.md.
test-long: venv
	$(VENV)/bin/python -m pytest -m long

# The worker under 10,000 fuzzed requests (every route; 0 5xx, RSS within +10 %); figures in out/fuzz.json.
# `make test` runs the same test with 400 requests. Protocol: docs/robustness.md.
fuzz: venv
	SAMMED_FUZZ_REQUESTS=10000 SAMMED_FUZZ_REPORT=out/fuzz.json $(VENV)/bin/python -m pytest Testing/robustness/test_fuzz.py -q -s

# One table: each runtime against torch, interleaved in one run (encoder, decode p50/p95, HTTP, peak RSS).
bench: venv
	$(VENV)/bin/sammed-server bench --runtimes onnxruntime,openvino,onnxruntime-int8 --http --slices 4 --decodes 60
	$(VENV)/bin/sammed-server bench --http --auto hsam,masam,decoder --batch

# The per-model tables alone: cache behaviour, prompt-encoder training, automatic models, batch on Ray.
bench-models: venv
	$(VENV)/bin/sammed-server bench --http --auto hsam,masam,decoder --batch

# Main-thread cost of writing results into a 512×512×300 segmentation with 10 segments (printed, not asserted).
bench-slicer: venv-slicer
	$(SLICER_VENV)/bin/python -m pytest Testing/slicer -m bench -s -q

clean:
	rm -rf $(VENV) $(SLICER_VENV) $(VIEW_VENV) out .pytest_cache
