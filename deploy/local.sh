#!/usr/bin/env bash
# The local quick start: installs what is missing, starts nats-server, redis-server and the
# StackStorm emulator on local ports (state under .whale/local, ignored by git), creates the
# streams, loads the example schemas and rules, runs every whale stage in one process and sends
# the example events through it — then shows what happened.
#
#   deploy/local.sh up      start everything and send the examples (idempotent)
#   deploy/local.sh down    stop everything started by `up` (streams, index and rate limits stay)
#   deploy/local.sh reset   stop everything and delete .whale/local: the next `up` starts afresh
#   deploy/local.sh status  show what runs
#
# Ports (override by environment): NATS 4222, Redis 6379, whale HTTP 8080, StackStorm emulator 9101.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE="$ROOT/.whale/local"
NATS_PORT=${WHALE_LOCAL_NATS_PORT:-4222}
REDIS_PORT=${WHALE_LOCAL_REDIS_PORT:-6379}
HTTP_PORT=${WHALE_LOCAL_HTTP_PORT:-8080}
ST2_PORT=${WHALE_LOCAL_ST2_PORT:-9101}
# Where cargo puts the binaries: `CARGO_TARGET_DIR` or a cargo config's `build.target-dir`
# when set (cargo metadata knows both), else target/. Shown relative to the checkout when inside.
TARGET=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null) ||
  TARGET=""
TARGET=${TARGET:-$ROOT/target}
WHALE="$TARGET/debug/whale"
EMULATOR="$TARGET/debug/st2-emulator"
SHOWN=${WHALE#"$ROOT/"}

log() { printf '\033[1mwhale-local:\033[0m %s\n' "$*" >&2; }

running() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 100); do port_open "$1" && return 0; sleep 0.1; done
  log "$2 did not start on port $1; see $STATE/$2.log"; exit 1
}

start() { # name port command...
  local name=$1 port=$2; shift 2
  if running "$name"; then log "$name already running"; return; fi
  if port_open "$port"; then log "port $port is taken by another process: set WHALE_LOCAL_${name^^}_PORT"; exit 1; fi
  nohup "$@" >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
  wait_port "$port" "$name"
  log "$name on 127.0.0.1:$port (log: .whale/local/$name.log)"
}

env_file() {
  cat >"$STATE/env" <<ENV
export WHALE_NATS_URL=nats://127.0.0.1:$NATS_PORT
export WHALE_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
export WHALE_HTTP_ADDR=127.0.0.1:$HTTP_PORT
export WHALE_ST2_URL=http://127.0.0.1:$ST2_PORT
export WHALE_ST2_API_KEY=local-dev-key
export WHALE_INDEX_DIR=$STATE/index
export WHALE_CONFIG=$STATE/whale.toml
ENV
  # nats-server reserves every stream's size cap on its disk up front (its store defaults to
  # 75% of the free disk); whale's production caps (1 + 8 + 4 GiB) would need ~18 GB free, so
  # the quick start asks for a laptop's share. Sizing for production: docs/limits.md.
  cat >"$STATE/whale.toml" <<TOML
[nats]
ingest_max_bytes = 268435456   # 256 MiB
events_max_bytes = 1073741824  # 1 GiB
pipe_max_bytes = 536870912     # 512 MiB
TOML
}

up() {
  mkdir -p "$STATE"
  "$ROOT/deploy/install.sh"
  log "building whale and the StackStorm emulator (first time takes a few minutes)"
  # The emulator is its own package: `--bins` alone builds only the root package's binaries.
  (cd "$ROOT" && cargo build --quiet -p whale -p st2-emulator --bins)
  for bin in "$WHALE" "$EMULATOR"; do
    [ -x "$bin" ] || { log "missing $bin after the build: run 'cargo build -p whale -p st2-emulator --bins' and read its errors"; exit 1; }
  done
  env_file
  # shellcheck disable=SC1091
  source "$STATE/env"
  cat >"$STATE/nats.conf" <<CONF
listen: 127.0.0.1:$NATS_PORT
max_payload: 8MB
jetstream { store_dir: "$STATE/nats" }
CONF
  start nats "$NATS_PORT" nats-server -c "$STATE/nats.conf"
  start redis "$REDIS_PORT" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$STATE" --save "" --appendonly yes --appendfsync everysec
  start st2 "$ST2_PORT" "$EMULATOR" --listen "127.0.0.1:$ST2_PORT" --any-action
  (cd "$ROOT" && "$WHALE" setup >/dev/null && "$WHALE" schemas apply schemas)
  if [ -d "$ROOT/pipelines" ] && "$WHALE" rules --help >/dev/null 2>&1; then
    (cd "$ROOT" && "$WHALE" rules apply pipelines)
  fi
  start whale "$HTTP_PORT" "$WHALE" run --stages all
  # An Alertmanager-shaped webhook through its adapter: one prometheus.alert event per alert,
  # the firing HostDiskFull ones become ops.clean_disk executions (pipelines/alertmanager.yaml).
  log "posting an Alertmanager webhook (tests/fixtures/hooks/alertmanager-v4.json) to /v1/hooks/alertmanager"
  if ! curl -sS -f -XPOST "http://127.0.0.1:$HTTP_PORT/v1/hooks/alertmanager" -H 'content-type: application/json' \
    --data-binary @"$ROOT/tests/fixtures/hooks/alertmanager-v4.json" >&2; then
    log "the Alertmanager webhook was refused: see $STATE/whale.log"
    exit 1
  fi
  echo >&2
  log "sending the example events (schemas/examples/*.ndjson)"
  for f in "$ROOT"/schemas/examples/*.ndjson; do
    "$WHALE" publish --file "$f" >/dev/null 2>"$STATE/publish.log" || true
  done
  curl -s -XPOST "http://127.0.0.1:$HTTP_PORT/v1/events" -H 'content-type: application/json' \
    -d '{"event_type":"generic","source":"quickstart/http","detail":{"message":"hello from HTTP"}}' >/dev/null
  (cd "$ROOT" && "$WHALE" status)
  # The promise of the quick start: events reach StackStorm. Read it back with the official CLI
  # and fail loudly when nothing arrived, instead of printing an empty table.
  local st2=(env ST2_API_URL="http://127.0.0.1:$ST2_PORT/api/v1" ST2_AUTH_URL="http://127.0.0.1:$ST2_PORT/auth/v1"
    ST2_STREAM_URL="http://127.0.0.1:$ST2_PORT/stream/v1" ST2_API_KEY=local-dev-key ST2_CLI_SKIP_CONFIG=1
    "$ROOT/.whale/tools/bin/st2")
  # Wait for the first execution, then until the count stops growing for a second (the
  # events sent above are still on their way when the first one arrives). A second `up` within
  # the examples' rate limits (pipelines/*.yaml; kept in Redis across restarts) dispatches
  # nothing: every task is throttled, which the metrics say.
  local n=0 seen=0 still=0 throttled=0
  for _ in $(seq 1 60); do
    n=$("${st2[@]}" execution list -n 100 -j 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin) or []))' 2>/dev/null || echo 0)
    throttled=$(curl -s "http://127.0.0.1:$HTTP_PORT/metrics" |
      awk '/^whale_throttle_decisions_total\{.*decision="throttled"/ {t += $NF} END {print t + 0}')
    if [ "$n" -gt 0 ] || [ "$throttled" -gt 0 ]; then
      if [ "$n" -eq "$seen" ]; then
        still=$((still + 1))
        [ "$still" -ge 2 ] && break
      else
        still=0
      fi
    fi
    seen=$n
    sleep 0.5
  done
  if [ "$n" -eq 0 ] && [ "$throttled" -gt 0 ]; then
    log "no execution this time: the rate limits throttled $throttled task(s) (pipelines/*.yaml, e.g. one clean_disk per host per 10 min; kept in Redis across restarts). Wait, or start afresh: deploy/local.sh reset && deploy/local.sh up"
    (cd "$ROOT" && "$WHALE" events search '*' --kind throttled --limit 5) || true
  elif [ "$n" -eq 0 ]; then
    log "no execution reached the StackStorm emulator within 30 s: see $STATE/whale.log and $STATE/st2.log, and 'whale status'"
    exit 1
  fi
  if [ "$n" -gt 0 ]; then
    log "$n execution(s) on the StackStorm emulator (official st2 CLI):"
    "${st2[@]}" execution list -n 20
  fi
  cat >&2 <<DONE

whale is running. Try:
  source .whale/local/env
  $SHOWN publish --type vm.disk_usage --data '{"host":"web-12","usage_pct":97,"env":"prod","mounts":[{"path":"/data"}]}'
  curl -XPOST localhost:$HTTP_PORT/v1/events -H 'content-type: application/json' -d '{"event_type":"generic","detail":{"message":"hi"}}'
  curl -XPOST localhost:$HTTP_PORT/v1/hooks/alertmanager -H 'content-type: application/json' --data-binary @tests/fixtures/hooks/alertmanager-v4.json
  $SHOWN hooks test alertmanager --body tests/fixtures/hooks/alertmanager-v4.json
  $SHOWN status
  $SHOWN events search 'event_type:vm.disk_usage AND detail.env:prod'
  $SHOWN trace <event id from the search>
  $SHOWN exec list
  curl -s localhost:$HTTP_PORT/metrics | grep whale_stage
Stop with: deploy/local.sh down
DONE
}

down() {
  for name in whale st2 redis nats; do
    if running "$name"; then
      kill "$(cat "$STATE/$name.pid")" 2>/dev/null || true
      for _ in $(seq 1 50); do running "$name" || break; sleep 0.1; done
      log "stopped $name"
    fi
    rm -f "$STATE/$name.pid"
  done
}

status() {
  for name in nats redis st2 whale; do
    if running "$name"; then echo "$name: running (pid $(cat "$STATE/$name.pid"))"; else echo "$name: stopped"; fi
  done
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  reset) down; rm -rf "$STATE"; log "deleted $STATE" ;;
  status) status ;;
  *) echo "usage: deploy/local.sh up|down|reset|status" >&2; exit 2 ;;
esac
