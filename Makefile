# make demo: set everything up and run the sample pipeline on a local cluster (SQLite).
# make test: the whole test suite (real redis-server, Celery, PostgreSQL, Chromium, Slurm); .ci/run calls it.
# make test-fast: the tests that start no service, in seconds: run them while editing.
VENV ?= .venv
PYTHON ?= python3
export PIPELINE_HOME ?= $(CURDIR)/.pipeline
# Tests run in parallel processes: most of their time is spent waiting on clusters.
TEST_PROCESSES ?= 3
PIPELINE := $(VENV)/bin/pipeline
# The Debian packages of the services the tests start (tools/install-system-packages.sh
# installs those missing); the benchmarks start all of them but the browser.
SERVICE_PACKAGES := redis-server postgresql slurm-wlm munge

.PHONY: demo test test-fast lint stop venv clean bench bench-quick bench-large soak

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# An editable install leaves the project's own modules uncompiled (a wheel's install
# compiles them), and where PYTHONDONTWRITEBYTECODE is set, as on CI, every command and
# every algorithm's child would compile a changed module again: about 45 ms of a command's
# start for all of them. Compiled again whenever a source is newer (after a pull, say).
SOURCES := $(shell find pipeline workers bench -name '*.py' 2>/dev/null)
$(VENV)/.compiled: $(VENV)/.installed $(SOURCES)
	$(VENV)/bin/python -m compileall -q pipeline workers bench
	touch $@

venv: $(VENV)/.compiled

# The benchmarks' own extra (Dramatiq, the peer figure a is held against) on top of the
# tests' environment; make test never needs it.
$(VENV)/.bench-installed: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	touch $@

demo: venv
	bash tools/install-system-packages.sh redis-server
	PIPELINE=$(PIPELINE) bash tools/demo.sh

test: venv
	bash tools/install-system-packages.sh $(SERVICE_PACKAGES) chromium
	$(VENV)/bin/pytest -n $(TEST_PROCESSES) --dist loadgroup --no-loadscope-reorder

# No service, no process of the pipeline's: the stages run in the test's own process.
test-fast: venv
	$(VENV)/bin/pytest -n 2 -m "not e2e and not postgres and not slow"

# make bench: the benchmark suite (minutes; not part of make test), see docs/benchmarks.md.
bench: $(VENV)/.bench-installed $(VENV)/.compiled
	bash tools/install-system-packages.sh $(SERVICE_PACKAGES)
	$(VENV)/bin/python -m bench

bench-quick: $(VENV)/.bench-installed $(VENV)/.compiled
	bash tools/install-system-packages.sh $(SERVICE_PACKAGES)
	$(VENV)/bin/python -m bench --quick

# make bench-large: one instance of 1,000,000 no-op subtasks on PostgreSQL (10 to 15 minutes,
# not part of make bench), see docs/benchmarks.md.
bench-large: $(VENV)/.bench-installed $(VENV)/.compiled
	bash tools/install-system-packages.sh redis-server postgresql
	$(VENV)/bin/python -m bench.large

# make soak: the chaos soak for SOAK_SECONDS (600) with faults at random (not part of
# make test, which runs its short version), its report in bench/results; see
# docs/operator-guide.md.
SOAK_SECONDS ?= 600
soak: venv
	bash tools/install-system-packages.sh redis-server postgresql
	SOAK_SECONDS=$(SOAK_SECONDS) SOAK_REPORT=bench/results/soak-$$(date -u +%Y%m%dT%H%M%SZ).json \
		$(VENV)/bin/pytest -p no:cacheprovider -s -n 0 --timeout $$(( $(SOAK_SECONDS) + 900 )) tests/test_soak.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

stop: venv
	$(PIPELINE) cluster stop

clean: stop
	rm -rf $(PIPELINE_HOME)
