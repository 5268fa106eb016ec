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
  stop_standalone
  rm -rf "$work"
}
trap cleanup EXIT

start_standalone "$bin" "$work"
mkdir "$work/reader"
python3 scripts/check-docs.py "$base" "$work/reader"
