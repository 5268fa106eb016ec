#!/usr/bin/env bash
# Validates a YAML stream of Kubernetes objects offline, strictly:
#   - Kubernetes' own kinds against the Kubernetes schemas of the given version (kubernetes-validate,
#     unknown fields rejected);
#   - KEDA's and prometheus-operator's kinds against those projects' typed models (scripts/crd-kinds:
#     field types, required fields, and no field a model does not declare);
#   - the kinds of the operators a backing service is delegated to (mariadb-operator, RabbitMQ's
#     cluster-operator, the OpenSearch operator) against the openAPIV3Schema of the CustomResourceDefinitions
#     those projects publish, kept beside the repository in ../shared/crds (or $CHATSYS_DELEGATED_CRDS),
#     with every field a schema does not declare refused, as the API server's pruning would drop it.
# Usage: validate-kinds.sh FILE KUBERNETES_VERSION. Prints what it checked; exits non-zero on any failure.
# Needs kubernetes-validate, python3 with PyYAML and jsonschema, node, and scripts/crd-kinds installed
# (bash .ci/tools.sh).
set -euo pipefail

file=$1
kubernetes_version=$2
scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
crd_kinds="$scripts/crd-kinds"
delegated_crds="${CHATSYS_DELEGATED_CRDS:-$scripts/../../shared/crds}"
if [[ ! -d "$crd_kinds/node_modules" ]]; then
  echo "validate-kinds: scripts/crd-kinds is not installed (bash .ci/tools.sh)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$file" "$work/core.yaml" "$work/others.jsonl" "$work/delegated.jsonl" <<'PYTHON'
import json
import sys

import yaml

stream, core_path, others_path, delegated_path = sys.argv[1:]
optional_groups = ("keda.sh/", "monitoring.coreos.com/")
delegated_groups = ("k8s.mariadb.com/", "rabbitmq.com/", "opensearch.opster.io/")
with open(stream) as f:
    documents = [d for d in yaml.safe_load_all(f) if d]
core = [d for d in documents if not d["apiVersion"].startswith(optional_groups + delegated_groups)]
others = [d for d in documents if d["apiVersion"].startswith(optional_groups)]
delegated = [d for d in documents if d["apiVersion"].startswith(delegated_groups)]
with open(core_path, "w") as f:
    yaml.safe_dump_all(core, f)
with open(others_path, "w") as f:
    f.writelines(json.dumps(d) + "\n" for d in others)
with open(delegated_path, "w") as f:
    f.writelines(json.dumps(d) + "\n" for d in delegated)
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
delegated=$(grep -c . "$work/delegated.jsonl" || true)
if ((delegated > 0)); then
  if [[ ! -d "$delegated_crds" ]]; then
    echo "validate-kinds: $delegated objects for other operators, and no CustomResourceDefinitions to check them against: $delegated_crds is missing (set CHATSYS_DELEGATED_CRDS)" >&2
    exit 1
  fi
  if PYTHONPATH="$(dirname "${BASH_SOURCE[0]}")" python3 - "$delegated_crds" "$work/delegated.jsonl" <<'PYTHON'
import copy
import glob
import json
import os
import sys

import jsonschema
import yaml

from crd_schema import refuse_unknown_fields


crds_dir, objects_path = sys.argv[1:]
schemas = {}
for path in sorted(glob.glob(os.path.join(crds_dir, "*.yaml"))):
    with open(path) as f:
        for crd in yaml.safe_load_all(f):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            for version in crd["spec"]["versions"]:
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                refuse_unknown_fields(schema)
                schemas[key] = (schema, version.get("served", False), os.path.basename(path))
failed = False
with open(objects_path) as f:
    objects = [json.loads(line) for line in f if line.strip()]
for obj in objects:
    key = (obj["apiVersion"], obj["kind"])
    name = f"{obj['kind']} {obj['metadata']['name']}"
    if key not in schemas:
        print(f"validate-kinds: {name}: no CustomResourceDefinition for {key[1]} of {key[0]} in {crds_dir}", file=sys.stderr)
        failed = True
        continue
    schema, served, source = schemas[key]
    if not served:
        print(f"validate-kinds: {name}: {key[0]} is not served by {source}", file=sys.stderr)
        failed = True
    for error in jsonschema.Draft7Validator(schema).iter_errors(obj):
        path = ".".join(str(p) for p in error.absolute_path) or "(root)"
        print(f"validate-kinds: {name}: {path}: {error.message} (against {source})", file=sys.stderr)
        failed = True
sys.exit(1 if failed else 0)
PYTHON
  then
    echo "validate-kinds: $delegated objects for other operators valid against their CustomResourceDefinitions"
  else
    status=1
  fi
fi
exit "$status"
