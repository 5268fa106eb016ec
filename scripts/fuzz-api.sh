#!/usr/bin/env bash
# Fuzzes the API from its own /openapi.json with schemathesis, against the standalone server and against
# the API and worker on MariaDB, Redis and RabbitMQ. Every check is on: no 5xx, responses that match the
# documented schemas, status codes and headers, schema-valid requests accepted. Exits non-zero on any
# failure. Binaries come from $CHATSYS_BIN (default: debug/ in cargo's target directory).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin=${CHATSYS_BIN:-$(bash scripts/target-dir.sh)/debug}
examples=${FUZZ_MAX_EXAMPLES:-50}
work=$(mktemp -d)
pids=()
run=
# Stops the servers, then removes what the full-stack run made on the shared services, passed or failed.
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -n $run ]]; then
    mysql -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS chatsys_$run" || true
    for queue in "chatsys.$run.quorum" "chatsys.$run.quorum.dead"; do
      rabbitmqctl --quiet delete_queue "$queue" >/dev/null 2>&1 || true
    done
    # In Redis itself: the fuzzer's keys hold quotes and spaces, which no pipe of names survives.
    redis-cli EVAL "local cursor = '0'
      repeat
        local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
        cursor = page[1]
        for _, key in ipairs(page[2]) do redis.call('UNLINK', key) end
      until cursor == '0'" 0 "chatsys_$run:*" >/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=scripts/local-server.sh
source scripts/local-server.sh

fuzz() { # name, base url
  echo "==> schemathesis against $1 ($2)"
  PYTHONPATH="$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}" SCHEMATHESIS_HOOKS=fuzz_hooks schemathesis --config-file scripts/schemathesis.toml run "$2/openapi.json" --checks all --max-examples "$examples" \
    -H "Authorization: Bearer fuzz-admin-key" --no-color
}

port=$(free_port)
# Event streams end after a second, so the fuzzer's reads of them end too.
"$bin/chatsys-api" standalone --listen "127.0.0.1:$port" --data-dir "$work/standalone" \
  --admin-key fuzz-admin-key --event-max-lifetime-secs 1 >"$work/standalone.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$port"
fuzz standalone "http://127.0.0.1:$port"

run="fuzz_$(date +%s)_$RANDOM"
mysql -uroot -h127.0.0.1 -e "CREATE DATABASE chatsys_$run CHARACTER SET utf8mb4"
export DATABASE_URL="mysql://root@127.0.0.1:3306/chatsys_$run" REDIS_URL=redis://127.0.0.1:6379 \
  AMQP_URL="amqp://guest:guest@127.0.0.1:5672/%2f" CHATSYS_QUEUE="chatsys.$run" CHATSYS_REDIS_PREFIX="chatsys_$run" \
  CHATSYS_DATA_DIR="$work/full" CHATSYS_ADMIN_KEY=fuzz-admin-key CHATSYS_LOG_FORMAT=text RUST_LOG=warn \
  CHATSYS_EVENT_MAX_LIFETIME_SECS=1
worker_port=$(free_port)
CHATSYS_LISTEN="127.0.0.1:$worker_port" "$bin/chatsys-worker" >"$work/worker.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$worker_port"
api_port=$(free_port)
CHATSYS_LISTEN="127.0.0.1:$api_port" CHATSYS_MIGRATE=false "$bin/chatsys-api" serve >"$work/api.log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$api_port"
fuzz "full stack" "http://127.0.0.1:$api_port"
