# reenact_jax — the two commands of the README (`make demo`, `make test`) and their setup.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MODELS_DIR := $(VENV)/share/reenact_jax/mediapipe
STAMP := $(VENV)/.installed
# cpu (default), tpu (Cloud TPU VMs: libtpu) or cuda12 (NVIDIA GPUs: the CUDA 12 plugin and
# wheels), all from PyPI at the pinned jax version.
ACCELERATOR ?= cpu
JAX_VERSION := $(shell sed -n 's/^jax==//p' requirements.txt)

.PHONY: setup test test-slow test-all demo lint clean-demo

setup: $(STAMP) $(MODELS_DIR)/.done

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	case "$(ACCELERATOR)" in \
	  cpu) ;; \
	  tpu|cuda12) $(PY) -m pip install --quiet "jax[$(ACCELERATOR)]==$(JAX_VERSION)" ;; \
	  *) echo "ACCELERATOR=$(ACCELERATOR): use cpu, tpu or cuda12" >&2; exit 2 ;; \
	esac
	touch $(STAMP)

# The face detector and face-mesh .tflite models ship inside the mediapipe==0.10.21 wheel.
# We take only those files (mediapipe itself pins numpy<2); fetched from PyPI once, here.
$(MODELS_DIR)/.done: $(STAMP) data/mediapipe_models.py data/mediapipe_wheel.py
	$(PY) -m data.mediapipe_models --output=$(MODELS_DIR)
	touch $@

# The fast suite (the README's test command), one test file per worker on every core (at most
# 4: each worker compiles its own models); `make test-slow` runs the multi-process, AOT and scale
# tests one at a time; `make test-all` both (CI runs both).
test: setup
	$(PY) -m pytest -q -m "not slow" -n auto --maxprocesses=4 --dist loadfile tests

test-slow: setup
	$(PY) -m pytest -q -m slow tests

test-all: test test-slow

lint: setup
	$(VENV)/bin/ruff check .

demo: setup
	$(PY) -m reenact_jax.demo --output=demo_out
