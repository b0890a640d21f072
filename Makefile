# kioskfleet: `make demo` runs the whole system, `make test` runs every test.
# Both set up what they need (venv, packages, mosquitto) on a fresh Debian/Ubuntu.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup system-deps demo test test-fast test-serial lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: system-deps $(STAMP)

# mosquitto (broker for tests and demo), prometheus (promtool + server for alert tests).
system-deps:
	@bash scripts/system-deps.sh

demo: setup
	$(PY) scripts/demo.py

# The tests run on PYTEST_WORKERS processes (pytest-xdist), each test file whole on one of
# them (--dist loadfile: a file's module fixtures start once). Most tests wait on brokers,
# servers and subprocesses, so 4 workers pay even on 2 cores. PYTEST_WORKERS=0 (or
# `make test-serial`) runs them in this one process, as before.
PYTEST_WORKERS ?= 4
ifeq ($(PYTEST_WORKERS),0)
XDIST :=
else
XDIST := -n $(PYTEST_WORKERS) --dist loadfile
endif

test: setup
	$(PY) -m pytest -q $(XDIST)

test-serial:
	$(MAKE) test PYTEST_WORKERS=0

# The quick loop while developing: no whole-system, fault-injection or browser tests.
test-fast: setup
	$(PY) -m pytest -q $(XDIST) -m "not slow and not browser"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# `make bench` (not part of `make test`): every benchmark, the ones with figures for the
# table writing JSON into $(BENCH_OUT); then bench/table.py appends ONE table to
# docs/benchmarks.md (machine, versions, each figure beside its target). About an hour;
# the soak alone loads both cores for ~15 min.
BENCH_OUT ?= var/bench

bench: setup
	rm -rf $(BENCH_OUT) && mkdir -p $(BENCH_OUT)
	$(PY) bench/ingest.py --json $(BENCH_OUT)/ingest-sqlite.json --profile $(BENCH_OUT)/ingest-sqlite.prof
	$(PY) bench/ingest.py --database postgresql --json $(BENCH_OUT)/ingest-postgresql.json \
		--profile $(BENCH_OUT)/ingest-postgresql.prof
	$(PY) bench/scrape.py
	$(PY) bench/scrape.py --problem-ratio 0.5 --offline-share 1 --variants collector,uncapped \
		--json $(BENCH_OUT)/scrape-mass-outage.json
	$(PY) bench/outbox.py
	$(PY) bench/broker_queue.py
	$(PY) bench/fleet_apply.py
	$(PY) bench/hostile.py
	$(PY) bench/enroll.py
	$(PY) bench/rollout.py --json $(BENCH_OUT)/rollout.json
	$(PY) bench/soak.py --json $(BENCH_OUT)/soak.json
	$(PY) bench/agent_footprint.py --json $(BENCH_OUT)/agent_footprint.json
	$(PY) bench/table.py --from $(BENCH_OUT)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache var
