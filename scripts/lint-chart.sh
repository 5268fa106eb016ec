#!/usr/bin/env bash
# Lints the operator's Helm chart and every shell script of the repository:
#   - the chart's CRD is the same file as crds/chatsystems.chatsys.io.yaml (what the operator generates);
#   - helm lint --strict, with the default values and with each values file in the chart's ci/ folder;
#   - helm template (CRD included) with the same values validates against the Kubernetes 1.33 schemas
#     (and a ServiceMonitor against prometheus-operator's model), strictly (unknown fields rejected), and
#     renders every kind it should;
#   - the ChatSystem the e2e suite applies is valid against the CRD's schema, unknown fields rejected;
#   - yamllint on the chart's values and the other hand-written YAML (kind config, e2e resources);
#   - shellcheck on every shell script under .ci/, scripts/, tests/e2e/ and operator/scripts/;
#   - hadolint on the Dockerfile.
# Tools come from PATH, with ./.tools/bin (filled by .ci/tools.sh) first when it exists.
set -euo pipefail
shopt -s nullglob

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
if [[ -d .tools/bin ]]; then
  PATH="$repo_root/.tools/bin:$PATH"
fi

chart=charts/chatsys-operator
crd_source=crds/chatsystems.chatsys.io.yaml
crd_copy="$chart/crds/chatsystems.chatsys.io.yaml"
kubernetes_version=1.33.0
release=chatsys-operator
namespace=chatsys-system

failures=0
fail() {
  echo "lint-chart: FAIL: $*" >&2
  failures=$((failures + 1))
}
pass() {
  echo "lint-chart: ok: $*"
}

missing=()
for tool in helm kubernetes-validate yamllint shellcheck hadolint python3; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]} > 0)); then
  echo "lint-chart: missing tools: ${missing[*]} (run: bash .ci/tools.sh)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [[ ! -f "$crd_source" ]]; then
  fail "$crd_source does not exist (generate it: make crds)"
elif ! cmp -s "$crd_source" "$crd_copy"; then
  fail "$crd_copy differs from $crd_source (copy it: make crds)"
else
  pass "$crd_copy equals $crd_source"
fi

# Kinds the chart must render with the default values; a render that silently drops one fails here.
default_kinds=(CustomResourceDefinition ServiceAccount ClusterRole ClusterRoleBinding Role RoleBinding
  Deployment Service PodDisruptionBudget)

values_files=("")
for file in "$chart"/ci/*-values.yaml; do
  values_files+=("$file")
done

for values in "${values_files[@]}"; do
  label=${values:-default values}
  values_args=()
  if [[ -n "$values" ]]; then
    values_args=(--values "$values")
  fi

  if helm lint --strict "${values_args[@]}" "$chart" >"$work/lint.out" 2>&1; then
    pass "helm lint ($label)"
  else
    cat "$work/lint.out" >&2
    fail "helm lint ($label)"
  fi

  rendered="$work/rendered.yaml"
  if ! helm template "$release" "$chart" --namespace "$namespace" --include-crds \
    --kube-version "$kubernetes_version" "${values_args[@]}" >"$rendered" 2>"$work/template.err"; then
    cat "$work/template.err" >&2
    fail "helm template ($label)"
    continue
  fi
  if bash scripts/validate-kinds.sh "$rendered" "$kubernetes_version"; then
    pass "helm template ($label) validates against Kubernetes $kubernetes_version and the models of KEDA's and prometheus-operator's kinds (strict)"
  else
    fail "helm template ($label) does not validate"
  fi

  if [[ -z "$values" ]]; then
    for kind in "${default_kinds[@]}"; do
      grep -q "^kind: $kind\$" "$rendered" || fail "helm template ($label) renders no $kind"
    done
  fi
done

# Unknown fields are an error, as with kubectl's default strict field validation; CEL rules are left
# to the API server.
if [[ -f "$crd_source" ]]; then
  if python3 - "$crd_source" tests/e2e/chatsystem.yaml <<'PYTHON'; then
import sys

import jsonschema
import yaml


def closed(schema):
    """The schema with additionalProperties false wherever it lists properties and allows no others."""
    if isinstance(schema, dict):
        schema = {key: closed(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    return schema


with open(sys.argv[1]) as crd_file:
    crd = yaml.safe_load(crd_file)
group = crd["spec"]["group"]
failed = False
for path in sys.argv[2:]:
    with open(path) as resource_file:
        for resource in yaml.safe_load_all(resource_file):
            version = resource["apiVersion"].removeprefix(group + "/")
            served = {v["name"]: v for v in crd["spec"]["versions"]}
            if version not in served or resource["kind"] != crd["spec"]["names"]["kind"]:
                print(f"{path}: {resource['apiVersion']} {resource['kind']} is not served by the CRD")
                failed = True
                continue
            schema = closed(served[version]["schema"]["openAPIV3Schema"])
            schema["properties"].update(
                apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"})
            for error in jsonschema.Draft7Validator(schema).iter_errors(resource):
                print(f"{path}: {'.'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}")
                failed = True
sys.exit(1 if failed else 0)
PYTHON
    pass "tests/e2e/chatsystem.yaml is valid against the CRD schema"
  else
    fail "tests/e2e/chatsystem.yaml is not valid against the CRD schema"
  fi
fi

yaml_files=("$chart/Chart.yaml" "$chart/values.yaml" "$chart"/ci/*.yaml kind-config.yaml tests/e2e/*.yaml)
yamllint_config='{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}}}'
if yamllint --strict -d "$yamllint_config" "${yaml_files[@]}"; then
  pass "yamllint (${#yaml_files[@]} files)"
else
  fail "yamllint"
fi

# Shell scripts: *.sh, and any file whose first line starts a shell (e.g. .ci/run).
shell_scripts=()
while IFS= read -r -d '' file; do
  if [[ "$file" == *.sh ]] || head -n 1 "$file" | grep -Eq '^#!.*[/ ](ba)?sh([[:space:]]|$)'; then
    shell_scripts+=("$file")
  fi
done < <(find .ci scripts tests/e2e operator/scripts -type f -print0 2>/dev/null | sort -z)
if ((${#shell_scripts[@]} == 0)); then
  fail "no shell script found under .ci/, scripts/, tests/e2e/ or operator/scripts/"
elif shellcheck --external-sources "${shell_scripts[@]}"; then
  pass "shellcheck (${shell_scripts[*]})"
else
  fail "shellcheck"
fi

if hadolint Dockerfile; then
  pass "hadolint Dockerfile"
else
  fail "hadolint Dockerfile"
fi

if ((failures > 0)); then
  echo "lint-chart: $failures check(s) failed" >&2
  exit 1
fi
echo "lint-chart: all checks passed"
