#!/usr/bin/env bash
# Validates a YAML stream of Kubernetes objects offline, strictly:
#   - Kubernetes' own kinds against the Kubernetes schemas of the given version (kubernetes-validate,
#     unknown fields rejected);
#   - KEDA's and prometheus-operator's kinds against those projects' typed models (scripts/crd-kinds:
#     field types, required fields, and no field a model does not declare).
# Usage: validate-kinds.sh FILE KUBERNETES_VERSION. Prints what it checked; exits non-zero on any failure.
# Needs kubernetes-validate, python3 with PyYAML, node, and scripts/crd-kinds installed (bash .ci/tools.sh).
set -euo pipefail

file=$1
kubernetes_version=$2
crd_kinds="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/crd-kinds"
if [[ ! -d "$crd_kinds/node_modules" ]]; then
  echo "validate-kinds: scripts/crd-kinds is not installed (bash .ci/tools.sh)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$file" "$work/core.yaml" "$work/others.jsonl" <<'PYTHON'
import json
import sys

import yaml

stream, core_path, others_path = sys.argv[1:]
optional_groups = ("keda.sh/", "monitoring.coreos.com/")
with open(stream) as f:
    documents = [d for d in yaml.safe_load_all(f) if d]
core = [d for d in documents if not d["apiVersion"].startswith(optional_groups)]
others = [d for d in documents if d["apiVersion"].startswith(optional_groups)]
with open(core_path, "w") as f:
    yaml.safe_dump_all(core, f)
with open(others_path, "w") as f:
    f.writelines(json.dumps(d) + "\n" for d in others)
PYTHON

status=0
core=$(grep -c '^kind: ' "$work/core.yaml" || true)
if kubernetes-validate -k "$kubernetes_version" --strict --quiet "$work/core.yaml"; then
  echo "validate-kinds: $core objects valid for Kubernetes $kubernetes_version"
else
  echo "validate-kinds: objects invalid for Kubernetes $kubernetes_version" >&2
  status=1
fi
others=$(grep -c . "$work/others.jsonl" || true)
if ((others > 0)); then
  if node "$crd_kinds/validate.mjs" <"$work/others.jsonl" >"$work/others.out"; then
    echo "validate-kinds: $others KEDA and prometheus-operator objects valid against their models"
  else
    cat "$work/others.out" >&2
    status=1
  fi
fi
exit "$status"
