#!/usr/bin/env bash
# Prints cargo's target directory for this workspace ($CARGO_TARGET_DIR, a config's, or ./target), as
# `cargo metadata` reports it: scripts find the binaries there, never under a hard-coded path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
