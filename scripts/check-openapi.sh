#!/usr/bin/env bash
# Reads the API's /openapi.json with the tools a client team would use, against a standalone server:
#   - openapi-spec-validator: the document is valid OpenAPI 3.1;
#   - Spectral with its `spectral:oas` ruleset: no error, no warning, no hint;
#   - openapi-python-client generates a client, and clients/python/walk.py walks the whole contract with
#     it (every operation, pagination, every error a client can provoke, parsed into the typed models);
#   - openapi-typescript generates types, tsc type-checks clients/typescript/walk.mts against them (with
#     calls the types must refuse), and node runs it against the server.
# Needs the tools of .ci/tools.sh and the binaries in $CHATSYS_BIN (default target/debug).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PATH="$PWD/.tools/bin:$PWD/clients/node_modules/.bin:$PATH"
# shellcheck source=scripts/local-server.sh
source scripts/local-server.sh

bin=${CHATSYS_BIN:-$(bash scripts/target-dir.sh)/debug}
admin_key=openapi-check-admin-key
work=$(mktemp -d)
server=
cleanup() {
  stop_standalone
  rm -rf "$work"
}
trap cleanup EXIT

# A short body timeout, so that the walk's stalled upload is answered 408 within a second.
start_standalone "$bin" "$work" --admin-key "$admin_key" --body-timeout-ms 500
curl -fsS "$base/openapi.json" -o "$work/openapi.json"

echo "==> openapi-spec-validator"
python3 -m openapi_spec_validator "$work/openapi.json"

echo "==> spectral lint (spectral:oas), failing on any finding"
spectral lint --ruleset clients/.spectral.yaml --fail-severity hint "$work/openapi.json"

echo "==> openapi-python-client, then the walk with the generated client"
openapi-python-client generate --path "$work/openapi.json" --meta none \
  --output-path "$work/python/chatsys_client"
PYTHONPATH="$work/python" python3 clients/python/walk.py "$base" "$admin_key"

echo "==> openapi-typescript, tsc, then the walk with openapi-fetch"
openapi-typescript "$work/openapi.json" --output clients/typescript/schema.d.ts
tsc -p clients/typescript/tsconfig.json
node clients/typescript/build/walk.mjs "$base"
