#!/usr/bin/env bash
# The README and docs/ hold together: relative links resolve (files and headings), and the commands they
# show marked `<!-- ci: run -->` run against a standalone server (scripts/check-docs.py).
# Needs the binaries in $CHATSYS_BIN (default: debug/ in cargo's target directory).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/local-server.sh
source scripts/local-server.sh

bin=${CHATSYS_BIN:-$(bash scripts/target-dir.sh)/debug}
work=$(mktemp -d)
server=
cleanup() {
  if [[ -n $server ]]; then kill "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(free_port)
"$bin/chatsys-api" standalone --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/server.log" 2>&1 &
server=$!
wait_ready "http://127.0.0.1:$port" || { cat "$work/server.log" >&2; exit 1; }
mkdir "$work/reader"
python3 scripts/check-docs.py "http://127.0.0.1:$port" "$work/reader"
