# Set-up-and-go commands (see README.md). Everything lands in a virtual environment,
# .venv, built on first use.
#   make demo    the main job: trains LeNet++ with center loss on Fashion-MNIST (CPU)
#   make openset open-set evaluation on Fashion-MNIST: softmax-only vs center loss on
#                classes held out of training (CPU, long: see docs/openset.md)
#   make openset-faces  the same on 2,000 generated identities, 500 held out
#   make test    every test: the Python suite, the C++ unit tests, and the CUDA kernels'
#                tests on the SIMT emulator (no GPU needed)
#   make bench   bench/compare.py over the full grid (bench-quick: the short CI run)
#   make test-cuda-emu   the CUDA kernels' tests on the SIMT emulator (no GPU needed)
#   make lint    ruff (lint, format check), mypy on the package, clang-format check of the
#                C++/CUDA sources; make format applies ruff's and clang-format's fixes
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
# torch guesses CUDA_HOME from `which nvcc`; name the toolkit where there is one
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME ?= /usr/local/cuda
endif

.PHONY: all build lint format test pytest cpp-test demo openset openset-faces bench bench-quick system-deps clean \
	emu-build test-cuda-emu test-cuda-asan test-cuda-race emu-coverage

all: build

$(VENV)/.deps: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

system-deps:
	scripts/system_deps.sh

# Builds the extension in place (incremental: ninja keeps build/ between runs) and puts
# the source tree on the venv's path, as `pip install --no-build-isolation -e .` would
# but without its full rebuild in a temporary folder every time.
build: $(VENV)/.deps
	$(PY) setup.py -q build_ext --inplace
	$(PY) -c 'import site, os; open(os.path.join(site.getsitepackages()[0], "centerloss_ext_dev.pth"), "w").write(os.getcwd() + "\n")'
	$(PY) -m centerloss_ext

pytest: build
	$(PY) -m pytest -q --durations=10

# The main job: LeNet++ with center loss on Fashion-MNIST, on the CPU, into runs/demo/
# (a new run replaces the previous demo's outputs: --overwrite, unless DEMO_ARGS resumes)
# (feature plots per epoch, features.gif, curves.png, metrics.json, checkpoint.pt).
# DEMO_RECIPE: BatchNorm, a one-cycle schedule, bf16 convolutions where native and λ = 0.03,
# for a 3-epoch run (docs/training.md);
# `make demo DEMO_EPOCHS=12 DEMO_RECIPE=` is the paper's recipe, the script's defaults
DEMO_EPOCHS ?= 3
DEMO_RECIPE ?= --batch-norm --lr-schedule onecycle --lr 3e-3 --amp auto --center-loss-weight 0.03
DEMO_ARGS ?=
demo: build system-deps
	$(PY) -m centerloss_ext.train.mnist --out runs/demo --epochs $(DEMO_EPOCHS) $(DEMO_RECIPE) $(if $(findstring --resume,$(DEMO_ARGS)),,--overwrite) $(DEMO_ARGS)

# Open-set evaluation (docs/openset.md): 3 class splits, softmax-only and center loss on
# each, into runs/openset/ (metrics.json, roc.png); a new run replaces the previous one's.
OPENSET_ARGS ?=
openset: build system-deps
	$(PY) -m centerloss_ext.train.openset --out runs/openset --overwrite $(OPENSET_ARGS)

# The same question on many classes (docs/openset.md): 2,000 generated identities, 500 of
# them held out of training, softmax-only (λ = 0) then center loss (the faces default
# λ = 0.005), into runs/openset_faces/{data,softmax,center}/ (~13 min on 2 CPU cores).
OPENSET_FACES_ARGS ?=
OPENSET_FACES_RUN = --input-dir runs/openset_faces/data --arch compact --image-size 32 \
	--no-augment --epochs 10 --eval-every 10 --overwrite
openset-faces: build
	$(PY) -m centerloss_ext.train.synthetic runs/openset_faces/data --identities 1500 \
	  --unseen 500 --train-per-identity 20 --val-per-identity 10 --image-size 32
	$(PY) -m centerloss_ext.train.faces train --out runs/openset_faces/softmax \
	  $(OPENSET_FACES_RUN) --center-loss-weight 0 $(OPENSET_FACES_ARGS)
	$(PY) -m centerloss_ext.train.faces train --out runs/openset_faces/center \
	  $(OPENSET_FACES_RUN) --center-loss-weight 0.005 $(OPENSET_FACES_ARGS)

# Style and types, on every commit (CI runs it first; .pre-commit-config.yaml the same
# checks for contributors). No build needed.
CPP_SOURCES = $(shell find csrc simt_emulator -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh')
lint: $(VENV)/.deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/clang-format --dry-run -Werror $(CPP_SOURCES)

format: $(VENV)/.deps
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(VENV)/bin/clang-format -i $(CPP_SOURCES)

cpp-test: build system-deps
	PYTHON=$(PY) scripts/cpp_tests.sh

test: pytest cpp-test test-cuda-emu

# The CUDA kernels without a GPU: csrc/cuda/*.cu compiled by g++ against the SIMT
# emulator (simt_emulator/) and run by every test marked `cuda` on the "simt" device, under two
# schedule seeds (SIMT_SEEDS, one process each, side by side: libgcov merges their counters
# into the .gcda files under a file lock), then line coverage of csrc/cuda; blocks run on
# one OS thread per process (SIMT_WORKERS=1: gcov's counters are not thread-safe without
# slow atomics).
# test-cuda-asan: the kernel tests under AddressSanitizer + UndefinedBehaviorSanitizer, with
# blocks on two OS threads side by side.
SIMT_SEEDS ?= 1 2
EMU_LIB = build/emu/cov/libcenterloss_simt.so
emu-build: build system-deps
	$(PY) simt_emulator/build.py --variant cov

test-cuda-emu: emu-build
	find build/emu/cov -name '*.gcda' -delete
	for seed in $(SIMT_SEEDS); do \
	  ( SIMT_WORKERS=1 SIMT_SEED=$$seed CENTERLOSS_SIMT_LIB=$(EMU_LIB) $(PY) -m pytest -q -m cuda \
	      -p no:cacheprovider python_tests > build/emu/seed$$seed.log 2>&1; \
	    echo $$? > build/emu/seed$$seed.rc ) & \
	done; wait; status=0; \
	for seed in $(SIMT_SEEDS); do \
	  echo "--- SIMT_SEED=$$seed"; cat build/emu/seed$$seed.log; \
	  [ "$$(cat build/emu/seed$$seed.rc)" = 0 ] || status=1; \
	done; exit $$status
	$(MAKE) --no-print-directory emu-coverage

emu-coverage:
	gcovr -r . --object-directory build/emu/cov --filter 'csrc/cuda/' --txt \
	  | tee build/emu/coverage.txt

# the tests aimed at the kernels themselves (the other device-parametrised tests run in
# test-cuda-emu; under ASan they would double its time for no new kernel path)
ASAN_TESTS ?= python_tests/cuda_kernels python_tests/ops/test_bad_input.py
test-cuda-asan: build system-deps
	$(PY) simt_emulator/build.py --variant asan
	eval "export $$($(PY) simt_emulator/build.py --variant asan --print-env)" && SIMT_SEED=3 \
	  $(PY) -m pytest -q -m cuda -p no:cacheprovider $(ASAN_TESTS)

# test-cuda-race: the same kernel tests under the race detector (ThreadSanitizer, every
# emulated thread a TSan fiber; docs/cuda_emulation.md, "Race detection"), plus the tests
# that plant races; any report fails the run, printed as the kernel, both .cu lines and
# the memory space (simt_emulator/race_report.py reads TSan's logs in RACE_REPORTS)
# Under the detector a 256-thread block costs ~100x its ASan time (every barrier and warp
# primitive is a release + acquire of vector clocks over ~1000 TSan fibers), so it runs a
# subset of the kernel tests that still launches every kernel on every path: the atomic
# (float32, float64) and sorted (16-bit; deterministic) updates, both update modes, the
# last-block loss reduction (mean) and per-row losses (none), small and odd sizes, a class
# over many chunks, split classes at most chunk boundaries (the last block to arrive sums
# them), the mixed-class slots of the atomic update, bfloat16 rows read by both updates
# (narrow and vector rows), bad labels (long runs of them too); the rest of the dtype
# grid repeats the same instructions with other types
RACE_TESTS ?= python_tests/cuda_kernels python_tests/ops/test_bad_input.py
RACE_SELECT ?= race_detector or bad_label or label_check_off or mixed_classes or walk_limit \
	or (matches_cpu and (dtype0-centers_dtype0-mean-alpha-False or dtype0-centers_dtype0-mean-optimizer-False \
	  or dtype0-centers_dtype0-none-alpha-True or dtype2-centers_dtype3-mean-optimizer-True \
	  or dtype1-centers_dtype1-mean-alpha-False)) \
	or (test_sizes and (-1-1-1 or 10-0-3 or 63-3-7 or 65-5-2)) or test_one_class_over_many_chunks[577] \
	or (every_dtype and (3-0-dtype1 or 128-0-dtype1)) or (everywhere and not 300) or long_runs \
	or test_bad_input
RACE_REPORTS = build/emu/race/reports
test-cuda-race: build system-deps
	$(PY) simt_emulator/build.py --variant race
	rm -rf $(RACE_REPORTS) && mkdir -p $(RACE_REPORTS)
	status=0; ( eval "export $$($(PY) simt_emulator/build.py --variant race --print-env)" && \
	  TSAN_OPTIONS="$$TSAN_OPTIONS:log_path=$(abspath $(RACE_REPORTS))/tsan" SIMT_SEED=4 \
	  $(PY) -m pytest -q -m cuda -p no:cacheprovider -k "$(RACE_SELECT)" $(RACE_TESTS) ) || status=$$?; \
	  $(PY) simt_emulator/race_report.py $(RACE_REPORTS) && exit $$status

# The benchmark of bench/RESULTS.md; the device is CUDA when one is visible.
bench: build
	$(PY) bench/compare.py --out build/bench

bench-quick: build
	$(PY) bench/compare.py --quick --out build/bench-quick

clean:
	rm -rf build centerloss_ext/_C*.so centerloss_ext/_build_info.py *.egg-info
