# vaekernels: every target sets itself up from a fresh clone (virtual environment, torch, build).
#   make demo    the main job          make test     the test suite (what CI runs)
#   make bench   CPU benchmarks        make wheel    sdist + wheel into dist/
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch (never let pip resolve a newer torch: that pulls the CUDA packages).
TORCH  ?= torch==2.13.0
DEPS   := triton pybind11 "cmake>=3.18" ninja "setuptools>=68" wheel build \
          pytest hypothesis numpy scipy pytest-benchmark matplotlib scikit-learn tqdm auditwheel
STAMP  := $(VENV)/.deps-installed
# e.g. VENV_FLAGS=--system-site-packages TORCH=torch on a machine whose torch is already there.
VENV_FLAGS ?=

.PHONY: setup build test demo bench wheel wheel-test info clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q $(DEPS)
	touch $@

setup: $(STAMP)

# Builds vaekernels/_C*.so in place (CMake, incremental in build/).  VAEKERNELS_CUDA=0 skips nvcc.
build: $(STAMP)
	MAX_JOBS=$${MAX_JOBS:-$$(nproc)} $(BIN)/python setup.py -q build_ext --inplace

# The suite, then every small benchmark case once (so the benchmarks cannot rot unnoticed).
test: build
	$(BIN)/python -m pytest -q
	PYTHONPATH=$(CURDIR) $(BIN)/python -m pytest benchmarks -q -k small --benchmark-disable -p no:cacheprovider

# Trains vk.nn.VAE on scikit-learn's digits, fused then naive (the package is built in place, not installed).
demo: build
	PYTHONPATH=$(CURDIR) $(BIN)/python examples/train_vae.py

# Both allocator modes, tables and plot into benchmarks/results/ (under 10 minutes on 2 cores).
bench: build
	PYTHON=$(BIN)/python benchmarks/run_cpu.sh

info: build
	$(BIN)/python -m vaekernels.info

# sdist + wheel (an isolated build env: setuptools, pybind11, cmake, ninja -- never torch).
# VAEKERNELS_CUDA=0 gives a CPU-only wheel; with nvcc the wheel carries _C_cuda too.
wheel: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	-$(BIN)/python -m auditwheel show dist/*.whl

# Installs the wheel into a fresh virtual environment (torch first, then the wheel without
# dependencies) and runs every op on every backend available there, from outside the tree.
WHEEL_VENV ?= /tmp/vaekernels-wheel-test
wheel-test: wheel
	rm -rf $(WHEEL_VENV)
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q "$(TORCH)" numpy
	$(WHEEL_VENV)/bin/python -m pip install -q --no-deps dist/*.whl
	cd /tmp && $(WHEEL_VENV)/bin/python $(CURDIR)/tests/wheel_smoke.py

clean:
	rm -rf build dist *.egg-info vaekernels/_C*.so
