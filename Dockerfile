# syntax=docker/dockerfile:1
#
# jobstream image: one image for every role, chosen by the command
# (worker | api | migrate | submit | status | dlq ... | fake-openrouter).
#
#   docker build -t jobstream .
#   docker run --rm jobstream --help

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- build: install into a venv
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# .dockerignore keeps tests, ops files, caches and local state out of the context.
COPY . .
# Not editable: the runtime stage gets the installed package only, not /src.
RUN pip install .

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}

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

COPY --from=build /opt/venv /opt/venv

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
