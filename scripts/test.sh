#!/usr/bin/env bash
# The test command (`make test`): starts the backing services (installing them where missing), installs
# the offline tools, runs the whole test suite, then reads the OpenAPI document with the client tools
# (scripts/check-openapi.sh), has a real browser on another origin call the API
# (scripts/check-browser.sh), and checks the documentation's links and commands (scripts/check-docs.sh).
# CI runs this first, then its further checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

bash scripts/services.sh

step "tools"
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked
bash .ci/tools.sh
export PATH="$PWD/.tools/bin:$PATH"

step "tests"
cargo nextest run --workspace --no-fail-fast

step "the OpenAPI document, read by the client tools"
# Every binary is built once for the whole workspace, so the feature set (and the build) is the tests' one.
cargo build -q --workspace --bins
bash scripts/check-openapi.sh

step "a real browser on another origin: CORS, idempotency keys, event streams"
bash scripts/check-browser.sh

step "the README and docs/: links resolve, and the commands they show run"
bash scripts/check-docs.sh
