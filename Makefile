# jobstream — every command a newcomer needs. `make demo` and `make test` work on a fresh
# machine: they create the virtualenv, install Java/Maven/PostgreSQL when missing, fetch the
# Kafka jars and start the local stack.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
LOCK   := requirements/dev.lock
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | sha1sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: help venv lock prereqs ops-tools stack-up stack-down stack-status demo test test-unit \
        test-integration lint format bench clean

help:
	@echo "make demo        stack + fake OpenRouter + a worker + a batch of echo jobs, with progress"
	@echo "make test        unit + integration tests against real Kafka and PostgreSQL"
	@echo "make lint        ruff + mypy + import contracts"
	@echo "make bench       end-to-end throughput/latency benchmark (JSON + table)"
	@echo "make stack-up    start the local Kafka 4 + PostgreSQL (make stack-down to stop)"
	@echo "make lock        re-pin $(LOCK) from pyproject.toml (the versions CI installs)"

# Exactly the pinned versions (hashes checked), then the project itself without resolving again;
# `pip check` fails when pyproject.toml needs a package the lock lacks: run `make lock`.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

# keeps the pins already in the lock; `make lock UPGRADE=--upgrade` moves every one to the newest
lock: venv
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
	    --generate-hashes --custom-compile-command "make lock" --quiet $(UPGRADE) -o $(LOCK)

prereqs: venv
	scripts/install-prereqs.sh $(PY)

ops-tools:
	scripts/install-ops-tools.sh

stack-up: prereqs
	$(PY) -m jobstream.streams.dev.stack up

stack-down:
	@if [ -x $(PY) ]; then $(PY) -m jobstream.streams.dev.stack down; fi

stack-status: venv
	$(PY) -m jobstream.streams.dev.stack status

demo: stack-up
	$(PY) -m jobstream demo --jobs $${JOBS:-2000} --replicas $${REPLICAS:-1}

test: stack-up ops-tools
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: stack-up
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

format: venv
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# e.g. BENCH_ARGS="--quick --scenarios echo-1,mixed-1 --profile"; --help lists the options
bench: stack-up
	$(PY) -m jobstream.streams.dev.bench $(BENCH_ARGS)

clean: stack-down
	rm -rf .state bench-results .pytest_cache .mypy_cache .ruff_cache
