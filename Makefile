# Two commands for people: `make demo` and `make test`. Each creates .venv when it is missing and
# reuses it when present (stamp files inside .venv record what was installed from which inputs).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# onnxruntime-gpu where an NVIDIA GPU answers, onnxruntime elsewhere (the two wheels exclude each other).
ORT_EXTRA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
# The CUDA kernels compile whenever a toolkit is found, GPU or not (setup.py says what it resolved).
CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export CUDA_HOME
MAX_JOBS ?= 2
export MAX_JOBS
PLUGINS := $(sort $(dir $(wildcard plugins/*/pyproject.toml)))
EXT_SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' 2>/dev/null)
STAMP_TORCH := $(VENV)/.te-torch
STAMP_INSTALL := $(VENV)/.te-install
PYTEST_ARGS ?=
# Two pytest workers (pytest-xdist), one a core: the tests' `te` processes, forked from a server that
# imported torch once (tests/te_server.py, CONTRIBUTING.md), compute on one core each (the suite's times
# on each CPU family: README, "CPU families: what differs, measured").
PYTEST_WORKERS ?= 2
# Each worker's share of the cores for the thread pools of torch and OpenMP (its own and those of the `te`
# processes its tests start): left at one per core each, two workers spin four threads on two cores, and
# the suite took 1.6x as long (README, "CPU families"). MKL's pool too: the tests that pin a `te` process to
# one thread (OMP and MKL) can then fork it from the test server instead of starting Python and torch again.
TEST_THREADS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); t=$$((n / $(PYTEST_WORKERS))); echo $$((t > 0 ? t : 1)))

.PHONY: help setup test test-all demo bench clean

help:
	@echo "make demo      set up .venv if needed, then run the offline demo on real data"
	@echo "make test      set up .venv if needed, then run the test suite"
	@echo "make test-all  the test suite including slow tests (-m slow too)"
	@echo "make bench     te bench: every benchmark against its baseline (BENCH_SUITE=quick|full)"
	@echo "make setup     only create/update .venv"
	@echo "make clean     remove build outputs (keeps .venv)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=77" wheel ninja

# torch first: the extension builds against it without build isolation (else pip installs it twice).
$(STAMP_TORCH): | $(PY)
	$(PIP) install -q $(TORCH_PINS)
	touch $@

$(STAMP_INSTALL): $(STAMP_TORCH) pyproject.toml setup.py $(EXT_SOURCES) $(addsuffix pyproject.toml,$(PLUGINS))
	$(PIP) install -q --no-build-isolation -e ".[test,lora,doctor,scale,$(ORT_EXTRA)]" $(TORCH_PINS)
	@for p in $(PLUGINS); do echo "installing plugin $$p"; \
	  $(PIP) install -q --no-build-isolation -e "$${p}[test]" $(TORCH_PINS) || exit 1; done
	TE_REQUIRE_EXT=1 $(PY) -c "import transfer_engine.extension as e; e.load(); print('transfer_engine._C:', e.info())"
	touch $@

setup: $(STAMP_INSTALL)

# TE_REQUIRE_EXT=1: a broken extension build fails the tests instead of falling back quietly.
test: setup
	OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) TE_REQUIRE_EXT=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test-all: setup
	OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) TE_REQUIRE_EXT=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal -m "slow or not slow" $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/te demo --out te-demo

# te bench runs each script in benchmarks/ (te and its baseline in the same process), one at a time,
# and writes te-bench/results.{json,md} and ratios.png. BENCH_SUITE=full for the issues' full sizes;
# BENCH_ARGS=--publish makes the run the published one (benchmarks/RESULTS.md and README's rows).
BENCH_SUITE ?= quick
BENCH_ARGS ?=
bench: setup
	$(VENV)/bin/te bench --suite $(BENCH_SUITE) --out te-bench $(BENCH_ARGS)

clean:
	rm -rf build dist *.egg-info transfer_engine/_C*.so te-demo te-bench
