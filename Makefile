# jobstream — every command a newcomer needs. `make demo` and `make test` work on a fresh
# machine: they create the virtualenv, install Java/Maven/PostgreSQL when missing, fetch the
# Kafka jars and start the local stack.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
LOCK   := requirements/dev.lock
HASH   := $(shell cat pyproject.toml $(LOCK) | sha1sum | cut -c1-12)
STAMP  := $(VENV)/.installed-$(HASH)
# The other supported Pythons: each gets .venv-X.Y from the same lock, and `make test-pythons`
# runs the unit tests on it (the whole suite runs on .venv's, 3.11). Found by scripts/find-python.sh.
PYTHONS ?= 3.12 3.13
PYTEST_ARGS ?=

.PHONY: help venv venvs lock example-lock dist prereqs ops-tools stack-up stack-down \
        stack-status demo test test-unit test-pythons test-integration lint format bench clean

help:
	@echo "make demo        stack + fake OpenRouter + a worker + a batch of echo jobs, with progress"
	@echo "make test        unit + integration tests against real Kafka and PostgreSQL"
	@echo "make lint        ruff + mypy + import contracts"
	@echo "make bench       end-to-end throughput/latency benchmark (JSON + table)"
	@echo "make stack-up    start the local Kafka 4 + PostgreSQL (make stack-down to stop)"
	@echo "make test-pythons  the unit tests on Python $(PYTHONS) too (each in .venv-X.Y)"
	@echo "make lock        re-pin requirements/*.lock from pyproject.toml (the versions CI and the image install)"
	@echo "make dist        the wheels of jobstream and jobstream-dev (its [dev] extra) in dist/"

# Exactly the pinned versions (hashes checked), then the project itself, editable, without
# resolving again (an editable install maps all of jobstream/, the dev tooling included);
# `pip check` fails when pyproject.toml needs a package the lock lacks: run `make lock`.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

# The other Pythons' virtualenvs: the same lock, hashes and checks, installed by uv (pinned in the
# lock, from .venv): seconds each, where pip takes over a minute.
.venv-%/.installed-$(HASH): pyproject.toml $(LOCK) | $(STAMP)
	test -x .venv-$*/bin/python || "$$(scripts/find-python.sh $*)" -m venv --without-pip .venv-$*
	$(VENV)/bin/uv pip install --python .venv-$*/bin/python --quiet --require-hashes -r $(LOCK)
	$(VENV)/bin/uv pip install --python .venv-$*/bin/python --quiet --no-deps -e .
	$(VENV)/bin/uv pip check --python .venv-$*/bin/python
	rm -f .venv-$*/.installed-* && touch .venv-$*/.installed-$(HASH)

venvs: venv $(foreach v,$(PYTHONS),.venv-$(v)/.installed-$(HASH))

# Three locks from one resolution, universal (any platform, Python >= 3.11), with hashes:
#   dev.lock        what a checkout and CI install: jobstream, jobstream-dev, the test and tools groups
#   dev-stack.lock  jobstream with its [dev] extra (the image's dev target)
#   runtime.lock    a production install (the image): jobstream's dependencies only
# The last two are constrained by dev.lock, so every pin is the one CI tested. Keeps the pins
# already there; `make lock UPGRADE=--upgrade` moves every one to the newest.
UV_COMPILE := $(VENV)/bin/uv pip compile --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command "make lock" --quiet --no-emit-package jobstream \
	--no-emit-package jobstream-dev
# only uv is needed (from the current lock): a pyproject.toml that needs a package the lock
# lacks fails the venv's `pip check`, and this is what fixes that
$(VENV)/bin/uv:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)

lock: | $(VENV)/bin/uv
	$(UV_COMPILE) requirements/dev-stack.in --group pyproject.toml:test \
	    --group pyproject.toml:tools $(UPGRADE) -o $(LOCK)
	$(UV_COMPILE) requirements/dev-stack.in -c $(LOCK) -o requirements/dev-stack.lock
	$(UV_COMPILE) pyproject.toml -c $(LOCK) -o requirements/runtime.lock

# The example team's lock (examples/acme_jobs/requirements.lock, for its Dockerfile), made as a
# team makes its own: within the pins of runtime.lock, without jobstream (its image has it).
example-lock: dist
	$(VENV)/bin/uv pip compile --universal --python-version 3.11 --generate-hashes --quiet \
	    --custom-compile-command "make example-lock" examples/acme_jobs/pyproject.toml \
	    -c requirements/runtime.lock --find-links dist --no-emit-package jobstream \
	    -o examples/acme_jobs/requirements.lock

# The two wheels: jobstream (no dev tooling in it) and jobstream-dev (streams/dev/, what the
# [dev] extra installs), e.g. for `pip install --find-links dist "jobstream[dev]"`.
# setuptools builds in the source tree: a build/ left by an earlier build would add its files.
dist: venv
	rm -rf build streams/dev/build
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist . ./streams/dev

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

# every version runs, even after one fails; the exit status says whether any did
test-pythons: venvs
	@failed=""; for v in $(PYTHONS); do \
	    echo "== unit tests on Python $$v"; \
	    .venv-$$v/bin/python -m pytest tests/unit -q $(PYTEST_ARGS) || failed="$$failed $$v"; \
	done; \
	if [ -n "$$failed" ]; then echo "unit tests failed on Python$$failed"; exit 1; fi

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
	rm -rf .state bench-results .pytest_cache .mypy_cache .ruff_cache .venv-* build dist \
	    streams/dev/build
