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

.PHONY: setup setup-browser test test-slow test-all demo app lint clean-demo

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
# 4: each worker compiles its own models); `make test-slow` runs the multi-process, AOT, scale,
# browser and longer end-to-end tests one at a time; `make test-all` both (CI runs both).
test: setup
	$(PY) -m pytest -q -m "not slow" -n auto --maxprocesses=4 --dist loadfile tests

test-slow: setup
	$(PY) -m pytest -q -m slow tests

test-all: test test-slow

lint: setup
	$(VENV)/bin/ruff check .

demo: setup
	$(PY) -m reenact_jax.demo --output=demo_out

# The web page on http://127.0.0.1:7860 with the demo's model (trained by `make demo` first when
# demo_out/ holds none).
app: setup
	test -d demo_out/run/checkpoints || $(PY) -m reenact_jax.demo --output=demo_out
	$(PY) -m reenact_jax.app --workdir=demo_out/run

# Headless Chromium and its driver (Debian packages) for the web page's browser test; without
# them that test is skipped. Needs root (or sudo).
setup-browser:
	@if command -v chromedriver >/dev/null && \
	    (command -v chromium >/dev/null || command -v chromium-browser >/dev/null); then \
	  echo "Chromium and chromedriver are installed."; \
	else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi
