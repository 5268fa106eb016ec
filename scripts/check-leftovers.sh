#!/usr/bin/env bash
# Runs a command (CI gives it the test suite), then fails, naming them, if it left behind RabbitMQ
# queues, MySQL databases or Redis key prefixes that were not there before it ran: every test removes
# what it made, passed or failed (tests/scratch/src/lib.rs). Only chatsys names are compared,
# and only those new after the run, so whatever else the services hold does not count.
# Usage: bash scripts/check-leftovers.sh COMMAND [ARGUMENTS...]
set -euo pipefail

# Root's commands run as they are; anyone else's through sudo (rabbitmqctl reads the broker's cookie).
as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# One line per chatsys queue, database and Redis key prefix (in the logical databases the tests use:
# 0, and 1 for the cache's role), sorted.
resources() {
  {
    as_root rabbitmqctl -q list_queues --no-table-headers name | sed -n 's/^chatsys/queue &/p'
    mysql -uroot -h127.0.0.1 -N -e 'SHOW DATABASES' | sed -n 's/^chatsys/database &/p'
    for db in 0 1; do
      redis-cli -h 127.0.0.1 -n "$db" --scan --pattern 'chatsys*' | cut -d: -f1 | sed "s/^/redis db $db prefix /"
    done
  } | sort -u
}

before=$(mktemp)
trap 'rm -f "$before"' EXIT
resources >"$before"
status=0
"$@" || status=$?
left=$(resources | comm -13 "$before" -)
if [[ -n $left ]]; then
  echo "'$*' left $(wc -l <<<"$left") things behind on the shared services:" >&2
  head -n 50 <<<"$left" >&2
  [[ $status -ne 0 ]] || status=1
fi
exit "$status"
