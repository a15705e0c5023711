# Set-up-and-go commands (see README.md). Everything lands in a virtual environment,
# .venv, built on first use.
#   make demo    the main job: trains LeNet++ with center loss on Fashion-MNIST (CPU)
#   make test    every test: the Python suite and the C++ unit tests
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
# torch guesses CUDA_HOME from `which nvcc`; name the toolkit where there is one
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME ?= /usr/local/cuda
endif

.PHONY: all build test pytest cpp-test demo bench bench-quick system-deps clean

all: build

$(VENV)/.deps: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

system-deps:
	scripts/system_deps.sh

# --no-build-isolation: the extension must compile against the torch in the venv
build: $(VENV)/.deps
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -m centerloss_ext

pytest: build
	$(PY) -m pytest -q

# The main job: LeNet++ with center loss on Fashion-MNIST, on the CPU, into runs/demo/
# (feature plots per epoch, features.gif, curves.png, metrics.json, checkpoint.pt).
DEMO_EPOCHS ?= 3
DEMO_ARGS ?=
demo: build system-deps
	$(PY) -m centerloss_ext.train.mnist --out runs/demo --epochs $(DEMO_EPOCHS) $(DEMO_ARGS)

cpp-test: build system-deps
	PYTHON=$(PY) scripts/cpp_tests.sh

test: pytest cpp-test

clean:
	rm -rf build centerloss_ext/_C*.so centerloss_ext/_build_info.py *.egg-info
