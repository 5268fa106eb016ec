#!/usr/bin/env bash
# A real browser on another origin against a standalone server (clients/browser/cors.mjs): Chromium,
# driven by playwright-core, creates and lists from an allowed origin through CORS preflights, retries a
# create with an Idempotency-Key, follows a chat's event stream across a restart of the server, and
# from any other origin can neither read an answer nor have a "simple" POST acted upon.
# Needs the system's Chromium (/usr/bin/chromium; scripts/services.sh installs it), the tools of
# .ci/tools.sh (playwright-core in clients/node_modules) and the binaries in $CHATSYS_BIN (default: cargo's
# target directory's debug/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

chromium=/usr/bin/chromium
if [[ ! -x $chromium ]]; then
  echo "check-browser.sh: FAILED: no Chromium at $chromium; install it with: apt-get install chromium" >&2
  echo "(scripts/services.sh installs it; playwright-core downloads no browser)" >&2
  exit 1
fi
if [[ ! -d clients/node_modules/playwright-core ]]; then
  echo "check-browser.sh: FAILED: playwright-core is not installed; run: bash .ci/tools.sh" >&2
  exit 1
fi

bin=${CHATSYS_BIN:-$(bash scripts/target-dir.sh)/debug}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The script starts the server itself (it restarts it midway), logging to $work/server.log.
if ! node clients/browser/cors.mjs "$bin/chatsys-api" "$work"; then
  if [[ -f $work/server.log ]]; then
    echo "==> the server's log" >&2
    cat "$work/server.log" >&2
  fi
  exit 1
fi
