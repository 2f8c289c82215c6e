#!/usr/bin/env bash
# Installs what the local dev stack (streams/dev/stack.py) needs, and only what is missing:
# a Java >= 17 runtime and Maven (to run Kafka from Maven Central jars) and the PostgreSQL
# server binaries; and Chromium for the console's browser tests. Safe to re-run; never prompts.
#
# Usage: scripts/install-prereqs.sh [PYTHON]
#   PYTHON (or $JOBSTREAM_PYTHON), e.g. .venv/bin/python, also pre-fetches the Kafka jars into
#   ~/.cache/jobstream so the first `python -m jobstream.streams.dev.stack up` needs no network.
#   Without it the jars are fetched on first use.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

MIN_JAVA=17
PY="${1:-${JOBSTREAM_PYTHON:-}}"
case "$PY" in /* | "") ;; */*) PY="$PWD/$PY" ;; esac  # we cd to the repo before using it
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_ROOT="${JOBSTREAM_PG_ROOT:-/usr/lib/postgresql}"

log() { printf 'install-prereqs: %s\n' "$*" >&2; }

java_bin() {
    if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
        echo "$JAVA_HOME/bin/java"
    else
        command -v java || true
    fi
}

# 17 for `openjdk version "17.0.15"`, 8 for the old `"1.8.0_392"` scheme, 0 if unknown
java_major() {
    local bin out major minor
    bin="$(java_bin)"
    [ -n "$bin" ] || { echo 0; return; }
    out="$("$bin" -version 2>&1 | head -n 1)" || { echo 0; return; }
    major="$(printf '%s\n' "$out" | sed -nE 's/.*version "([0-9]+).*/\1/p')"
    minor="$(printf '%s\n' "$out" | sed -nE 's/.*version "[0-9]+\.([0-9]+).*/\1/p')"
    if [ "${major:-0}" = 1 ]; then echo "${minor:-0}"; else echo "${major:-0}"; fi
}

have_pg() {
    local d
    for d in "$PG_ROOT"/*/bin; do
        [ -x "$d/postgres" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && return 0
    done
    return 1
}

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo --preserve-env=DEBIAN_FRONTEND "$@"
    else
        log "need root (or sudo) to run: $*"
        exit 1
    fi
}

apt_updated=0
apt_install() {
    if ! command -v apt-get >/dev/null; then
        log "no apt-get here; install these yourself: $*"
        exit 1
    fi
    if [ "$apt_updated" = 0 ]; then
        as_root apt-get update -q
        apt_updated=1
    fi
    as_root apt-get install -y -q --no-install-recommends "$@"
}

pkgs=()
[ "$(java_major)" -ge "$MIN_JAVA" ] || pkgs+=(default-jre-headless)
command -v mvn >/dev/null || pkgs+=(maven)
have_pg || pkgs+=(postgresql)
# the console's browser tests drive Debian's Chromium through Playwright (no browser download)
command -v chromium >/dev/null || [ -x /usr/bin/chromium ] || pkgs+=(chromium)
# the pooler tests run jobstream behind PgBouncer in transaction mode (Supabase-like)
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || pkgs+=(pgbouncer)

if [ "${#pkgs[@]}" -gt 0 ]; then
    log "installing: ${pkgs[*]}"
    apt_install "${pkgs[@]}"
else
    log "java >= $MIN_JAVA, mvn, the PostgreSQL server, pgbouncer and chromium are already installed"
fi

# Older distributions (Ubuntu 22.04) default to Java 11; ask for a versioned runtime instead.
if [ "$(java_major)" -lt "$MIN_JAVA" ]; then
    for pkg in openjdk-21-jre-headless openjdk-17-jre-headless; do
        if apt-cache show "$pkg" >/dev/null 2>&1; then
            log "default Java is older than $MIN_JAVA; installing $pkg"
            apt_install "$pkg"
            break
        fi
    done
fi
if [ "$(java_major)" -lt "$MIN_JAVA" ]; then
    log "java on PATH is still older than $MIN_JAVA; select a newer one with update-alternatives --config java or set JAVA_HOME"
    exit 1
fi

if [ -n "$PY" ]; then
    log "pre-fetching the Kafka jars with $PY"
    (cd "$REPO_ROOT" && "$PY" -m jobstream.streams.dev.stack fetch)
else
    log "no PYTHON given: the Kafka jars will be fetched on the first 'python -m jobstream.streams.dev.stack up'"
fi
