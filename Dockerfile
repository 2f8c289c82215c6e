# syntax=docker/dockerfile:1
#
# jobstream image: one image for every role, chosen by the command
# (worker | api | console | migrate | submit | status | dlq ...). It holds exactly the versions of
# requirements/runtime.lock (hashes checked), not a fresh resolve, and no development tooling.
#
#   docker build -t jobstream .                    the production image (the last stage)
#   docker build --target dev -t jobstream-dev .    plus jobstream[dev]: fake-openrouter, demo
#   docker run --rm jobstream --help
#
# A team ships its own job types as an image built on this one: examples/acme_jobs/Dockerfile.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build: a venv of the locked versions
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The pinned dependencies first: this layer is rebuilt only when the lock changes.
COPY requirements/runtime.lock requirements/
RUN pip install --require-hashes -r requirements/runtime.lock
# .dockerignore keeps tests, ops files, caches and local state out of the context.
COPY . .
# The two wheels (jobstream; jobstream-dev from streams/dev/, for the dev target), then jobstream
# alone: --no-deps resolves nothing again, and pip check fails when the lock lacks a dependency.
RUN pip wheel --no-deps --wheel-dir /wheels . ./streams/dev \
    && pip install --no-deps /wheels/jobstream-*.whl \
    && pip check

# ---------------------------------------------------------------- build-dev: the same plus jobstream[dev]
FROM build AS build-dev
# --no-index: the extra's dependencies come from the lock, jobstream-dev from its wheel
RUN pip install --require-hashes -r requirements/dev-stack.lock \
    && pip install --no-index --find-links /wheels "jobstream[dev]" \
    && pip check

# ---------------------------------------------------------------- base: what both images share
FROM ${PYTHON_IMAGE} AS base

# The web server (/metrics, /health, /ready, producer API) must listen beyond loopback
# inside a container; the settings default of 127.0.0.1 suits a developer's machine.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    JOBSTREAM_WEB_HOST=0.0.0.0 \
    JOBSTREAM_WEB_PORT=6066 \
    JOBSTREAM_STATE_DIR=/var/lib/jobstream/state

# pg_dump/pg_restore for `jobstream backup`/`restore` (the backup CronJob). Debian's client is
# that of its PostgreSQL major; pg_dump must be at least the server's major (set
# JOBSTREAM_PG_BIN_DIR to a newer client's bin directory for a newer server).
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*

# Fixed numeric ids so Kubernetes runAsUser/fsGroup can match them.
RUN groupadd --system --gid 10001 jobstream \
    && useradd --system --uid 10001 --gid jobstream \
        --home-dir /var/lib/jobstream --create-home --shell /usr/sbin/nologin jobstream \
    && install -d -o jobstream -g jobstream /var/lib/jobstream/state

USER 10001:10001
WORKDIR /var/lib/jobstream

EXPOSE 6066

# Workers drain in-flight jobs on SIGTERM within JOBSTREAM_SHUTDOWN_GRACE_S (default 25 s);
# give `docker stop` / compose a longer timeout than that (stop_grace_period).
STOPSIGNAL SIGTERM

# Liveness only (/health): readiness (/ready) also depends on Kafka and PostgreSQL and would mark
# a live process unhealthy during an outage of either. The slim image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('JOBSTREAM_WEB_PORT', '6066'), timeout=3)"]

ENTRYPOINT ["jobstream"]
CMD ["worker"]

# ---------------------------------------------------------------- dev: compose's fake OpenRouter, demos
FROM base AS dev
# root-owned and read-only for the jobstream user, as in the runtime image
COPY --from=build-dev /opt/venv /opt/venv

# ---------------------------------------------------------------- runtime: the production image
FROM base AS runtime
COPY --from=build /opt/venv /opt/venv
