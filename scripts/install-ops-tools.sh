#!/usr/bin/env bash
# Installs the tools that tests/unit/test_ops_config.py runs against the ops files:
#   promtool  (Debian package "prometheus")               prometheus.yml, alert rules, rule unit tests
#   amtool    (Debian package "prometheus-alertmanager")  alertmanager.yml
#   helm      (built from the Go module, cached)           chart lint and template
#
# Idempotent: tools already on PATH (or helm already in the cache dir) are not installed again.
# Nothing installed here is left running: the packages' services are kept from starting and, if
# one started anyway, stopped again.
#
# Environment:
#   HELM_VERSION    helm module version to build      (default below)
#   HELM_BIN_DIR    where the helm binary is cached    (default: $(go env GOPATH)/bin, i.e. ~/go/bin)
#   OPS_TOOLS_FORCE=1  rebuild helm even if cached
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '[install-ops-tools] %s\n' "$*" >&2; }
now() { date +%s; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# ---------------------------------------------------------------- promtool and amtool (apt)
install_apt_tools() {
    local missing=()
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    command -v amtool >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
    if [ "${#missing[@]}" -eq 0 ]; then
        log "promtool and amtool already installed"
        return
    fi

    # Keep apt from starting prometheus/alertmanager (they would listen on all interfaces).
    # Exit code 101 from policy-rc.d means "action forbidden" to invoke-rc.d / deb-systemd-invoke.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 755 "$policy"
        created_policy=1
        # removed again below, or here if apt fails
        trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    fi

    local t0
    t0=$(now)
    log "apt: installing ${missing[*]}"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    log "apt: done in $(($(now) - t0)) s"

    if [ "$created_policy" -eq 1 ]; then
        $SUDO rm -f "$policy"
        trap - EXIT
    fi
    stop_packaged_services
}

stop_packaged_services() {
    # Belt and braces: if a service manager started them anyway, stop and disable them.
    local svc
    for svc in prometheus prometheus-alertmanager; do
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
            log "stopping service $svc"
            $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
        elif [ -x "/etc/init.d/$svc" ]; then
            $SUDO "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
        fi
    done
    # Only the daemons started as these packages' system user; never a broad name match.
    local pid
    for pid in $(pgrep -u prometheus -x prometheus 2>/dev/null || true) \
        $(pgrep -u prometheus -x prometheus-alertmanager 2>/dev/null || true); do
        log "stopping leftover daemon pid $pid"
        $SUDO kill "$pid" 2>/dev/null || true
    done
}

# ---------------------------------------------------------------- helm (go install, cached)
install_helm() {
    # The Go toolchain may be installed but not on a non-login shell's PATH.
    if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
        PATH="$PATH:/usr/local/go/bin"
    fi
    if ! command -v go >/dev/null 2>&1; then
        log "go not found: cannot build helm"
        return 1
    fi
    local bin_dir
    bin_dir="${HELM_BIN_DIR:-$(go env GOPATH)/bin}"
    local helm_bin="$bin_dir/helm"

    if [ -x "$helm_bin" ] && [ "${OPS_TOOLS_FORCE:-0}" != "1" ]; then
        # Only this script's build reports the full version (set by -ldflags below; a plain
        # `go install` reports "v3.xx"), so it tells a build of ours and of which version.
        if [ "$("$helm_bin" version --template '{{ .Version }}' 2>/dev/null)" = "$HELM_VERSION" ]; then
            log "helm ${HELM_VERSION} already built at $helm_bin"
            link_helm "$helm_bin"
            return
        fi
        log "cached helm at $helm_bin is not ${HELM_VERSION} built by this script: rebuilding"
    fi

    local t0
    t0=$(now)
    log "building helm ${HELM_VERSION} (go install; takes minutes on a small machine)"
    mkdir -p "$bin_dir"

    # What helm's Makefile sets: its version, and the Kubernetes version it assumes without a
    # cluster (taken from its client-go dependency). Without these a `go install` build reports
    # version "v3.xx" and renders charts for Kubernetes 1.20.
    local gomod k8s_minor
    gomod=$(go mod download -json "helm.sh/helm/v3@${HELM_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
    k8s_minor=$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$gomod" | head -n1)
    local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
    if [ -n "$k8s_minor" ]; then
        local pkg
        for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
            ldflags+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${k8s_minor}"
        done
    fi

    GOBIN="$bin_dir" CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" \
        "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
    log "helm: built in $(($(now) - t0)) s"
    link_helm "$helm_bin"
}

link_helm() {
    # Also put helm on the default PATH (/usr/local/bin), so tests and later shells find it
    # whether or not ~/go/bin is on their PATH.
    local helm_bin="$1" link=/usr/local/bin/helm
    if [ "$(readlink -f "$link" 2>/dev/null)" != "$(readlink -f "$helm_bin")" ]; then
        $SUDO ln -sf "$helm_bin" "$link" || log "could not link $link; add $(dirname "$helm_bin") to PATH"
    fi
}

install_apt_tools
install_helm

promtool --version 2>&1 | head -n1 >&2
amtool --version 2>&1 | head -n1 >&2
helm version --short >&2

# Fail if anything these packages started listens beyond loopback.
if command -v ss >/dev/null 2>&1; then
    if ss -ltnpH 2>/dev/null | grep -E 'prometheus|alertmanager' \
        | grep -v -E '[[:space:]](127\.[0-9.]+|\[::1\]|\[::ffff:127\.[0-9.]+\]):[0-9]+[[:space:]]' >&2; then
        log "ERROR: a prometheus/alertmanager process listens beyond loopback (see above)"
        exit 1
    fi
fi
log "ok"
