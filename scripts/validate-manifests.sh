#!/usr/bin/env bash
# Validates the operator's output offline:
#  0. the CustomResourceDefinition that `chatsys-operator crd` prints, against the Kubernetes 1.33 schemas;
#  1. every manifest that `chatsys-operator render` prints for each example, with validate-kinds.sh:
#     Kubernetes' own kinds against the Kubernetes 1.33 schemas (strict), KEDA's and prometheus-operator's
#     against their projects' typed models, and those of the operators a backing service is delegated to
#     against the CustomResourceDefinitions those projects publish (../shared/crds); render itself
#     refuses an example that breaks the CRD's CEL rules;
#  2. each example itself, against the openAPIV3Schema of the CRD that `chatsys-operator crd` prints,
#     with unknown fields under `spec` refused, as the API server's strict field validation does.
# Needs the `kubernetes-validate` and `jsonschema` Python packages, node, and scripts/crd-kinds installed
# (bash .ci/tools.sh). Exits non-zero on any failure.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
operator="${CHATSYS_OPERATOR:-$(bash "$root/scripts/target-dir.sh")/debug/chatsys-operator}"
kubernetes_version="1.33.0"

if [[ ! -x "$operator" ]]; then
  echo "operator binary not found at $operator (build it, or set CHATSYS_OPERATOR)" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$operator" crd > "$work/crd.yaml"

passed=0
failures=0
examples=0
pass() {
  echo "ok   $1"
  passed=$((passed + 1))
}
fail() {
  echo "FAIL $1" >&2
  failures=$((failures + 1))
}

if kubernetes-validate -k "$kubernetes_version" --strict --quiet "$work/crd.yaml"; then
  pass "crd: the CustomResourceDefinition is valid for Kubernetes $kubernetes_version"
else
  fail "crd: the CustomResourceDefinition is invalid for Kubernetes $kubernetes_version"
fi
for example in "$root"/examples/*.yaml; do
  name="$(basename "$example" .yaml)"
  examples=$((examples + 1))
  if PYTHONPATH="$root/scripts" python3 - "$work/crd.yaml" "$example" <<'PYTHON'
import sys

import jsonschema
import yaml

from crd_schema import refuse_unknown_fields


crd_path, example_path = sys.argv[1], sys.argv[2]
with open(crd_path) as f:
    crd = yaml.safe_load(f)
with open(example_path) as f:
    resource = yaml.safe_load(f)
names = crd["spec"]["names"]
version = crd["spec"]["versions"][0]
expected = (f"{crd['spec']['group']}/{version['name']}", names["kind"])
if (resource.get("apiVersion"), resource.get("kind")) != expected:
    sys.exit(f"{example_path}: not a {expected[1]} of {expected[0]}")
schema = version["schema"]["openAPIV3Schema"]
refuse_unknown_fields(schema["properties"]["spec"])
errors = list(jsonschema.Draft7Validator(schema).iter_errors(resource))
for error in errors:
    path = ".".join(str(p) for p in error.absolute_path) or "(root)"
    print(f"{example_path}: {path}: {error.message}", file=sys.stderr)
sys.exit(1 if errors else 0)
PYTHON
  then
    pass "$name: valid against the ChatSystem CRD schema"
  else
    fail "$name: invalid against the ChatSystem CRD schema"
  fi
  if ! "$operator" render -f "$example" > "$work/$name.rendered.yaml"; then
    fail "$name: render failed"
    continue
  fi
  if bash "$root/scripts/validate-kinds.sh" "$work/$name.rendered.yaml" "$kubernetes_version"; then
    pass "$name: rendered manifests valid"
  else
    fail "$name: rendered manifests invalid"
  fi
done

if [[ $examples -eq 0 ]]; then
  fail "no examples found under $root/examples"
fi
echo "$passed passed, $failures failed"
[[ $failures -eq 0 ]]
