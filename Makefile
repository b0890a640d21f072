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

bench: setup
	$(PY) bench/ingest.py
	$(PY) bench/scrape.py
	$(PY) bench/outbox.py
	$(PY) bench/broker_queue.py
	$(PY) bench/fleet_apply.py
	$(PY) bench/hostile.py
	$(PY) bench/enroll.py
	$(PY) bench/rollout.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache var
