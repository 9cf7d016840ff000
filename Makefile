# Two commands do all the set-up on a fresh machine:
#   make up    - the whole local platform (prints its URLs; Ctrl-C stops it)
#   make test  - every test
# Both create .venv, install the project with its extras and build the native
# extension first. REDIS_URL / DATABASE_URL, when set, point both at running servers.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.flashgate-installed
NATIVE := $(VENV)/.flashgate-native
PORT    ?= 8000
WORKERS ?= 2
PYTEST_ARGS ?=
TEST_WORKERS ?= 2

.PHONY: up test install native bench loadtest clean-data help

help:
	@echo "make up      start the local platform on port $(PORT) (PORT=, WORKERS= to change)"
	@echo "make test    run every test, in $(TEST_WORKERS) processes (TEST_WORKERS=0: one; PYTEST_ARGS= to pass options)"
	@echo "make bench   run the benchmarks in bench/"
	@echo "make loadtest SCENARIO=flash_sale [VUS=500 DURATION=60 LOADTEST_ARGS=...]  a k6 load test with a verdict"

$(STAMP): pyproject.toml setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo "flashgate: could not create a virtualenv; install it with 'sudo apt-get install python3-venv' (Debian/Ubuntu)"; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel cython
	$(BIN)/python -m pip install -q -e '.[dev,loadtest]'
	@touch $(STAMP)

$(NATIVE): $(STAMP) $(wildcard hotpath/*.pyx hotpath/*.pxd) setup.py
	$(BIN)/python setup.py -q build_ext --inplace
	@touch $(NATIVE)

install: $(NATIVE)
native: $(NATIVE)

up: $(NATIVE)
	$(BIN)/flashgate up --demo --port $(PORT) --workers $(WORKERS)

test: $(NATIVE)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

SCENARIO ?= flash_sale
VUS ?= 500
DURATION ?= 60
LOADTEST_ARGS ?=
loadtest: $(NATIVE)
	$(BIN)/flashgate loadtest $(SCENARIO) --vus $(VUS) --duration $(DURATION) $(LOADTEST_ARGS)

bench: $(NATIVE)
	@for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean-data:
	rm -rf var/
