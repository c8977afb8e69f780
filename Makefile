# vaekernels: every target sets itself up from a fresh clone (virtual environment, torch, build).
#   make demo    the main job          make test     the test suite (what CI runs)
#   make bench   CPU benchmarks        make wheel    sdist + wheel into dist/
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch (never let pip resolve a newer torch: that pulls the CUDA packages).
TORCH  ?= torch==2.13.0
DEPS   := triton pybind11 "cmake>=3.18" ninja "setuptools>=68" wheel build \
          pytest hypothesis numpy scipy pytest-benchmark matplotlib scikit-learn tqdm
STAMP  := $(VENV)/.deps-installed

.PHONY: setup build test demo bench wheel info clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q $(DEPS)
	touch $@

setup: $(STAMP)

# Builds vaekernels/_C*.so in place (CMake, incremental in build/).  VAEKERNELS_CUDA=0 skips nvcc.
build: $(STAMP)
	MAX_JOBS=$${MAX_JOBS:-$$(nproc)} $(BIN)/python setup.py -q build_ext --inplace

test: build
	$(BIN)/python -m pytest -q

demo: build
	$(BIN)/python examples/quickstart.py

info: build
	$(BIN)/python -m vaekernels.info

wheel: $(STAMP)
	$(BIN)/python -m build --no-isolation --outdir dist .

clean:
	rm -rf build dist *.egg-info vaekernels/_C*.so
