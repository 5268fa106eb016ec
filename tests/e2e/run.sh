#!/usr/bin/env bash
# End-to-end test of the whole delivery path, on a throwaway kind cluster:
#   1. create the cluster from kind-config.yaml (a unique name; deleted on exit, pass or fail);
#   2. build the api, worker and operator images and load them into the cluster;
#   3. install ingress-nginx (its kind manifest) and metrics-server (for the HPAs);
#   4. install the operator's Helm chart;
#   5. apply tests/e2e/chatsystem.yaml and wait for its Ready condition;
#   6. check that both HPAs exist and that the API's HPA wants more replicas under a bounded load;
#   7. check that the ingress routes the API's public paths only and that listing applications needs
#      the admin key the operator generated; run the black-box conformance suite against the API's
#      Service (port-forwarded, with its metrics port); the API at its maximum replicas under load
#      with no "Too many connections"; an API image rolled back onto a schema it does not know
#      (Degraded, the running version serving, then recovered); the node RabbitMQ runs on drained
#      (the broker back with an owner-only cookie and no restart);
#   8. day two: turn the API's autoscaling off and on again (its replicas never fall below the
#      minimum), kill the leader operator pod under a load of reads (the standby takes over, an edit is
#      still applied, the API keeps answering), upgrade the operator to a build of the next version
#      (the API and worker roll to that version's images by themselves), grow MySQL's volume on kind's non-expanding storage class (reported in the
#      status, and the rest of the edit still applied);
#   9. what platform teams expect: NetworkPolicies enforced (a pod outside the ChatSystem cannot reach
#      MySQL; one labelled as its API can); monitoring asked for before prometheus-operator's CRDs exist
#      (Degraded, naming them), then the monitors and the alerts once they are installed; the worker on
#      the queue's backlog before KEDA exists (Degraded, scaling on CPU), then KEDA installed, the worker
#      growing while a backlog is queued and shrinking after it drains;
#  10. delete the ChatSystem: everything goes but MySQL's retained volume and its credentials; apply it
#      again and find the data written before; the backup drill (backups on, one taken, a new
#      ChatSystem restored from it holding the data, its search index rebuilt); delete it and what was
#      kept, and check nothing is left;
#  11. delegated mode: mariadb-operator, RabbitMQ's cluster-operator and the OpenSearch operator
#      installed, a ChatSystem handing all three databases to them Ready, storing and finding a message.
# It needs docker with a running engine, kind, kubectl, helm, cargo with cargo-nextest, and curl, and
# the host's ports 80 and 443 free. Without them it fails at once and says what is missing: it never
# reports success without having run every step.
# Environment: E2E_KEEP_CLUSTER=1 keeps the cluster for inspection; KIND_NODE_IMAGE picks the node image.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [[ -d "$repo_root/.tools/bin" ]]; then
  PATH="$repo_root/.tools/bin:$PATH"
fi

cluster="chatsys-e2e-$(date +%Y%m%d%H%M%S)-$$"
operator_namespace=chatsys-system
namespace=chatsys-e2e
chatsystem_file="$repo_root/tests/e2e/chatsystem.yaml"
chatsystem=e2e
base_url=http://localhost
ingress_nginx_manifest=https://raw.githubusercontent.com/kubernetes/ingress-nginx/controller-v1.14.3/deploy/static/provider/kind/deploy.yaml
metrics_server_manifest=https://github.com/kubernetes-sigs/metrics-server/releases/download/v0.8.0/components.yaml
keda_manifest=https://github.com/kedacore/keda/releases/download/v2.16.1/keda-2.16.1.yaml
prometheus_operator_crds=https://github.com/prometheus-operator/prometheus-operator/releases/download/v0.80.1/stripped-down-crds.yaml
# The operators a delegated ChatSystem hands its databases to (the versions of the schemas in
# ../shared/crds that CI validates against; the OpenSearch operator's chart needs cert-manager).
mariadb_operator_chart_version=26.6.0
rabbitmq_cluster_operator_manifest=https://github.com/rabbitmq/cluster-operator/releases/download/v2.22.3/cluster-operator.yml
# kindnet enforces NetworkPolicies from kind v0.24.0 on.
kind_with_network_policies=0.24.0

# Every wait is bounded; these are the bounds, in seconds.
ready_timeout=900
reconcile_timeout=120
rollout_timeout=300
conformance_timeout=1800
metrics_timeout=300
load_timeout=300
deletion_timeout=300

work_dir=$(mktemp -d)
export KUBECONFIG="$work_dir/kubeconfig"
cluster_created=false
load_pid=""

log() {
  echo "e2e: $*"
}

die() {
  echo "e2e: FAILED: $*" >&2
  exit 1
}

# Runs "$@" every 5 s until it succeeds or the timeout passes.
wait_until() {
  local timeout=$1 description=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "e2e: gave up after ${timeout}s waiting until $description" >&2
      return 1
    fi
    sleep 5
  done
  log "$description"
}

stop_load() {
  if [[ -n "$load_pid" ]]; then
    kill "$load_pid" 2>/dev/null || true
    wait "$load_pid" 2>/dev/null || true
    load_pid=""
  fi
}

dump_diagnostics() {
  echo "e2e: ---- diagnostics ----" >&2
  kubectl get chatsystems -A -o yaml >&2 || true
  kubectl get all,ingresses,hpa,pdb,pvc -n "$namespace" -o wide >&2 || true
  kubectl get events -n "$namespace" --sort-by=.lastTimestamp >&2 || true
  kubectl logs -n "$operator_namespace" -l app.kubernetes.io/name=chatsys-operator --tail=200 --prefix >&2 || true
  echo "e2e: ---- end of diagnostics ----" >&2
}

on_exit() {
  local status=$?
  stop_load
  if [[ "$cluster_created" == true ]]; then
    if ((status != 0)); then
      dump_diagnostics
    fi
    if [[ "${E2E_KEEP_CLUSTER:-}" == 1 ]]; then
      log "keeping cluster $cluster (KUBECONFIG=$KUBECONFIG); delete it with: kind delete cluster --name $cluster"
    else
      log "deleting cluster $cluster"
      kind delete cluster --name "$cluster" >/dev/null 2>&1 || echo "e2e: could not delete cluster $cluster" >&2
    fi
  fi
  if [[ "${E2E_KEEP_CLUSTER:-}" != 1 ]]; then
    rm -rf "$work_dir"
  fi
  if ((status == 0)); then
    echo "e2e: PASSED"
  else
    echo "e2e: FAILED (exit status $status)" >&2
  fi
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

check_prerequisites() {
  local missing=() tool
  for tool in docker kind kubectl helm cargo curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if ((${#missing[@]} > 0)); then
    die "missing on this machine: ${missing[*]}. The end-to-end suite needs Docker, kind, kubectl, helm," \
      "cargo with cargo-nextest and curl (helm and kubectl: bash .ci/tools.sh). Nothing was tested."
  fi
  docker info >/dev/null 2>&1 ||
    die "docker is installed but no Docker engine answers ('docker info' failed): start it. Nothing was tested."
  cargo nextest --version >/dev/null 2>&1 ||
    die "cargo-nextest is missing (cargo install cargo-nextest --locked). Nothing was tested."
  local kind_version
  kind_version=$(kind version | sed -nE 's/^kind v([0-9.]+).*/\1/p')
  if [[ "$(printf '%s\n%s\n' "$kind_with_network_policies" "$kind_version" | sort -V | head -n 1)" != "$kind_with_network_policies" ]]; then
    die "kind $kind_version does not enforce NetworkPolicies (kind >= $kind_with_network_policies does). Nothing was tested."
  fi
}

workspace_version() {
  cargo pkgid --manifest-path "$repo_root/Cargo.toml" -p chatsys-api | sed 's/.*[@#]//'
}

# Builds the conformance suite before any cluster exists, so a compile error costs no cluster, and
# checks that the test binary aimed at a deployed system has tests in it.
build_conformance_suite() {
  log "building the conformance suite"
  local listing
  listing=$(cd "$repo_root" && cargo nextest list -p chatsys-conformance --run-ignored ignored-only \
    -E 'binary(external)' --message-format oneline)
  [[ -n "$listing" ]] || die "the conformance suite's 'external' binary lists no test"
  log "conformance suite: $(wc -l <<<"$listing") tests in binary 'external'"
}

create_cluster() {
  local image_args=()
  if [[ -n "${KIND_NODE_IMAGE:-}" ]]; then
    image_args=(--image "$KIND_NODE_IMAGE")
  fi
  log "creating kind cluster $cluster"
  cluster_created=true
  kind create cluster --name "$cluster" --config "$repo_root/kind-config.yaml" --kubeconfig "$KUBECONFIG" \
    --wait "${rollout_timeout}s" "${image_args[@]}"
}

build_and_load_images() {
  local version=$1 target images=()
  for target in api worker operator; do
    log "building image chatsys/chatsys-$target:$version"
    docker build --target "$target" --build-arg "VERSION=$version" -t "chatsys/chatsys-$target:$version" "$repo_root"
    images+=("chatsys/chatsys-$target:$version")
  done
  log "loading ${images[*]} into the cluster"
  kind load docker-image --name "$cluster" "${images[@]}"
}

install_ingress_controller() {
  log "installing ingress-nginx"
  kubectl apply -f "$ingress_nginx_manifest"
  kubectl -n ingress-nginx rollout status deployment/ingress-nginx-controller --timeout="${rollout_timeout}s"
}

install_metrics_server() {
  log "installing metrics-server"
  kubectl apply -f "$metrics_server_manifest"
  # kind's kubelets serve self-signed certificates.
  kubectl -n kube-system patch deployment metrics-server --type=json \
    -p '[{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "--kubelet-insecure-tls"}]'
  kubectl -n kube-system rollout status deployment/metrics-server --timeout="${rollout_timeout}s"
  wait_until "$metrics_timeout" "the metrics API reports node usage" kubectl top nodes
}

install_chart() {
  local version=$1
  log "installing the chatsys-operator chart"
  helm install chatsys-operator "$repo_root/charts/chatsys-operator" --namespace "$operator_namespace" \
    --create-namespace --set "image.tag=$version" --wait --timeout "${rollout_timeout}s"
  kubectl -n "$operator_namespace" rollout status deployment/chatsys-operator --timeout="${rollout_timeout}s"
}

apply_chatsystem() {
  log "applying $chatsystem_file"
  kubectl create namespace "$namespace"
  kubectl -n "$namespace" apply -f "$chatsystem_file"
  log "waiting up to ${ready_timeout}s for chatsystem/$chatsystem to be Ready"
  kubectl -n "$namespace" wait --for=condition=Ready "chatsystem/$chatsystem" --timeout="${ready_timeout}s"
  wait_until "$rollout_timeout" "the API answers through the ingress" curl -fsS --max-time 5 "$base_url/openapi.json"
}

admin_key() {
  kubectl_ns get "secret/$chatsystem-api-admin-key" -o jsonpath='{.data.admin-key}' | base64 -d
}

# The Ingress routes the API's public paths only: its operations endpoints are for the cluster.
check_ingress_paths() {
  local path status
  for path in /metrics /healthz /readyz; do
    status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$base_url$path")
    [[ "$status" == 404 ]] || die "$path answered $status through the ingress"
  done
  status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$base_url/applications")
  [[ "$status" == 401 ]] || die "listing applications without the admin key answered $status"
  status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $(admin_key)" "$base_url/applications")
  [[ "$status" == 200 ]] || die "listing applications with the generated admin key answered $status"
  log "the ingress serves the public paths only, and listing needs the generated admin key"
}

# The whole suite, operations endpoints included, against the API's Service itself (the ingress
# routes clients' paths only), with the metrics from their own port.
run_conformance_suite() {
  log "running the conformance suite against service/$chatsystem-api"
  kubectl_ns port-forward "service/$chatsystem-api" 18080:8080 19090:9090 >/dev/null 2>&1 &
  local forward=$!
  wait_until 60 "the API is forwarded to 127.0.0.1:18080" curl -fsS --max-time 5 http://127.0.0.1:18080/healthz
  local status=0
  (cd "$repo_root" && CHATSYS_BASE_URL=http://127.0.0.1:18080 CHATSYS_METRICS_URL=http://127.0.0.1:19090/metrics \
    CHATSYS_ALLOWED_ORIGIN=http://allowed.chatsys.test:3000 \
    CHATSYS_ADMIN_KEY="$(admin_key)" timeout "$conformance_timeout" \
    cargo nextest run -p chatsys-conformance --run-ignored ignored-only -E 'binary(external)') || status=$?
  kill "$forward" 2>/dev/null || true
  ((status == 0)) || die "the conformance suite failed"
}

# MySQL's own connection limit, read from a throwaway client pod labelled as the API.
mysql_max_connections() {
  local password
  password=$(kubectl_ns get "secret/$chatsystem-mysql-credentials" -o jsonpath='{.data.root-password}' | base64 -d)
  kubectl_ns run "mysql-client-$RANDOM" --quiet --rm -i --restart=Never --image=mysql:8.4 \
    --labels="app.kubernetes.io/name=chatsys,app.kubernetes.io/instance=$chatsystem,app.kubernetes.io/component=api" \
    --env="MYSQL_PWD=$password" --command -- \
    mysql -h "$chatsystem-mysql" -u root -N -e 'SELECT @@max_connections'
}

# The API at its autoscaling maximum under load: every pool fits in MySQL's limit.
check_connection_limit() {
  local limit
  limit=$(mysql_max_connections | tr -d '[:space:]')
  log "MySQL allows $limit connections"
  ((limit > 151)) || die "MySQL kept its default connection limit ($limit)"
  kubectl_ns patch "chatsystem/$chatsystem" --type=merge -p '{"spec":{"api":{"autoscaling":{"minReplicas":4}}}}'
  wait_until "$rollout_timeout" "the API runs its maximum of 4 replicas" deployment_replicas_are "$chatsystem-api" 4
  local token
  token=$(create_application "connections")
  generate_load "$token" &
  load_pid=$!
  sleep 60
  stop_load
  if kubectl_ns logs -l "app.kubernetes.io/instance=$chatsystem,app.kubernetes.io/component=api" --tail=-1 | grep -q "Too many connections"; then
    die "an API pod was refused a MySQL connection"
  fi
  kubectl_ns patch "chatsystem/$chatsystem" --type=merge -p '{"spec":{"api":{"autoscaling":{"minReplicas":1}}}}'
  log "4 API replicas under load opened no more connections than MySQL allows"
}

degraded_message_has() {
  kubectl_ns get "chatsystem/$chatsystem" -o jsonpath='{.status.conditions[?(@.type=="Degraded")].message}' | grep -q "$1"
}

# Rolling the API back to a release whose migrator does not know the applied schema: the migration
# Job fails at once, the status says so, and the running version keeps serving. Played by recording
# a migration from "the future" in the schema, then asking for another image tag of the same build.
check_rollback_is_degraded() {
  local version=$1 password token
  password=$(kubectl_ns get "secret/$chatsystem-mysql-credentials" -o jsonpath='{.data.root-password}' | base64 -d)
  kubectl_ns run "mysql-client-$RANDOM" --quiet --rm -i --restart=Never --image=mysql:8.4 \
    --labels="app.kubernetes.io/name=chatsys,app.kubernetes.io/instance=$chatsystem,app.kubernetes.io/component=api" \
    --env="MYSQL_PWD=$password" --command -- mysql -h "$chatsystem-mysql" -u root chatsys -e \
    "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (999, 'from a newer release', TRUE, x'00', 1)"
  docker tag "chatsys/chatsys-api:$version" "chatsys/chatsys-api:rollback"
  kind load docker-image --name "$cluster" "chatsys/chatsys-api:rollback"
  kubectl_ns patch "chatsystem/$chatsystem" --type=merge -p '{"spec":{"api":{"image":"chatsys/chatsys-api:rollback"}}}'
  wait_until "$ready_timeout" "the failed migration is Degraded with its reason" degraded_message_has "the schema migration failed"
  token=$(create_application "during a failed rollback")
  [[ -n "$token" ]] || die "the running version stopped serving"
  kubectl_ns run "mysql-client-$RANDOM" --quiet --rm -i --restart=Never --image=mysql:8.4 \
    --labels="app.kubernetes.io/name=chatsys,app.kubernetes.io/instance=$chatsystem,app.kubernetes.io/component=api" \
    --env="MYSQL_PWD=$password" --command -- mysql -h "$chatsystem-mysql" -u root chatsys -e \
    "DELETE FROM _sqlx_migrations WHERE version = 999"
  kubectl_ns patch "chatsystem/$chatsystem" --type=json -p '[{"op":"remove","path":"/spec/api/image"}]'
  wait_until "$ready_timeout" "chatsystem/$chatsystem is Ready again" chatsystem_is_ready
}

rabbitmq_node() {
  kubectl_ns get "pod/$chatsystem-rabbitmq-0" -o jsonpath='{.spec.nodeName}'
}

rabbitmq_moved_from() {
  local node
  node=$(rabbitmq_node)
  [[ -n "$node" && "$node" != "$1" ]] &&
    [[ "$(kubectl_ns get "pod/$chatsystem-rabbitmq-0" -o jsonpath='{.status.containerStatuses[0].ready}')" == true ]]
}

# Draining the node RabbitMQ runs on: the broker starts again (elsewhere, when its volume can
# follow) with its cookie readable by its owner only, and no restart of its container.
check_rabbitmq_drain() {
  local node restarts
  node=$(rabbitmq_node)
  log "draining $node, where RabbitMQ runs"
  kubectl drain "$node" --ignore-daemonsets --delete-emptydir-data --timeout="${rollout_timeout}s" >/dev/null
  kubectl uncordon "$node"
  wait_until "$ready_timeout" "RabbitMQ is ready again" rabbitmq_moved_from ""
  restarts=$(kubectl_ns get "pod/$chatsystem-rabbitmq-0" -o jsonpath='{.status.containerStatuses[0].restartCount}')
  ((restarts == 0)) || die "RabbitMQ restarted $restarts time(s) after the drain (its cookie?)"
  [[ "$(kubectl_ns exec "$chatsystem-rabbitmq-0" -c rabbitmq -- stat -c %a /var/lib/rabbitmq/.erlang.cookie)" == 400 ]] ||
    die "RabbitMQ's cookie is not owner-only"
  wait_until "$ready_timeout" "chatsystem/$chatsystem is Ready after the drain" chatsystem_is_ready
}

component_hpa() {
  kubectl -n "$namespace" get horizontalpodautoscalers \
    -l "app.kubernetes.io/instance=$chatsystem,app.kubernetes.io/component=$1" -o name
}

hpa_field() {
  kubectl -n "$namespace" get "$1" -o jsonpath="{$2}"
}

hpa_has_metrics() {
  [[ -n "$(hpa_field "$1" '.status.currentMetrics[0].resource.current.averageUtilization')" ]]
}

hpa_wants_more_than() {
  local desired
  desired=$(hpa_field "$1" '.status.desiredReplicas')
  [[ -n "$desired" ]] && ((desired > $2))
}

# Creates an application through the ingress and prints its token.
create_application() {
  local application token
  application=$(curl -fsS --max-time 10 -H 'content-type: application/json' -d "{\"name\": \"$1\"}" \
    "$base_url/applications")
  token=$(sed -nE 's/.*"token"[[:space:]]*:[[:space:]]*"([^"]+)".*/\1/p' <<<"$application")
  [[ -n "$token" ]] || die "no token in the created application: $application"
  echo "$token"
}

# Sends the requests of a curl config file, 32 at a time, again and again until the load deadline or
# a TERM, which also stops the curl in flight.
repeat_requests() {
  local requests=$1 deadline=$((SECONDS + load_timeout)) curl_pid=""
  trap 'if [[ -n "$curl_pid" ]]; then kill "$curl_pid" 2>/dev/null; fi; exit 0' TERM
  while ((SECONDS < deadline)); do
    curl --silent --no-progress-meter --parallel --parallel-max 32 --max-time 60 --config "$requests" &
    curl_pid=$!
    wait "$curl_pid" || true
  done
}

# Bounded load: many concurrent GETs of one application through the ingress.
generate_load() {
  local token=$1 requests="$work_dir/load.curl" i
  for ((i = 0; i < 2000; i++)); do
    printf 'url = "%s/applications/%s"\noutput = "/dev/null"\n' "$base_url" "$token"
  done >"$requests"
  repeat_requests "$requests"
}

check_autoscaling() {
  local api_hpa worker_hpa
  api_hpa=$(component_hpa api)
  worker_hpa=$(component_hpa worker)
  [[ -n "$api_hpa" ]] || die "no HorizontalPodAutoscaler for the API"
  [[ -n "$worker_hpa" ]] || die "no HorizontalPodAutoscaler for the worker"
  log "HPAs exist: $api_hpa, $worker_hpa"

  wait_until "$metrics_timeout" "$api_hpa reads CPU utilisation" hpa_has_metrics "$api_hpa"
  local baseline
  baseline=$(hpa_field "$api_hpa" '.status.desiredReplicas')
  if ((baseline >= $(hpa_field "$api_hpa" '.spec.maxReplicas'))); then
    die "$api_hpa already wants its maximum of $baseline replicas before any load"
  fi
  log "$api_hpa wants $baseline replica(s) at rest; loading the API for up to ${load_timeout}s"

  local token
  token=$(create_application "e2e load")

  generate_load "$token" &
  load_pid=$!
  wait_until "$load_timeout" "$api_hpa wants more than $baseline replica(s) under load" \
    hpa_wants_more_than "$api_hpa" "$baseline"
  stop_load
  log "$api_hpa now wants $(hpa_field "$api_hpa" '.status.desiredReplicas') replica(s)"
}

kubectl_ns() {
  kubectl -n "$namespace" "$@"
}

# Samples a Deployment's replica count every second into a file, until stopped.
sample_replicas() {
  local deployment=$1 out=$2
  while true; do
    kubectl_ns get "deployment/$deployment" -o jsonpath='{.spec.replicas}{"\n"}' >>"$out" 2>/dev/null || true
    sleep 1
  done
}

lowest_sample() {
  sort -n "$1" | grep -v '^$' | head -n 1
}

deployment_replicas_are() {
  [[ "$(kubectl_ns get "deployment/$1" -o jsonpath='{.spec.replicas}')" == "$2" ]]
}

hpa_is_absent() {
  [[ -z "$(component_hpa "$1")" ]]
}

hpa_is_present() {
  [[ -n "$(component_hpa "$1")" ]]
}

api_is_fixed_at() {
  deployment_replicas_are "$chatsystem-api" "$1" && hpa_is_absent api
}

# Autoscaling off with 3 replicas, then on again with a minimum of 2: the count never drops below
# what the system had, as the operator hands the field over instead of dropping it.
check_autoscaling_handover() {
  local samples="$work_dir/replicas" sampler lowest
  log "turning the API's autoscaling off (3 replicas)"
  kubectl_ns patch "chatsystem/$chatsystem" --type=merge \
    -p '{"spec":{"api":{"replicas":3,"autoscaling":{"enabled":false}}}}'
  wait_until "$reconcile_timeout" "the API has 3 replicas and no HPA" api_is_fixed_at 3
  : >"$samples"
  sample_replicas "$chatsystem-api" "$samples" &
  sampler=$!
  log "turning the API's autoscaling on again (minimum 2)"
  kubectl_ns patch "chatsystem/$chatsystem" --type=merge \
    -p '{"spec":{"api":{"autoscaling":{"enabled":true,"minReplicas":2}}}}'
  wait_until "$reconcile_timeout" "the API's HPA is back" hpa_is_present api
  sleep 20
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  lowest=$(lowest_sample "$samples")
  [[ -n "$lowest" ]] || die "no replica count was sampled"
  ((lowest >= 2)) || die "the API fell to $lowest replica(s) while autoscaling was turned on (samples: $(tr '\n' ' ' <"$samples"))"
  log "the API never had fewer than $lowest replicas during the handover"
}

leader() {
  kubectl -n "$operator_namespace" get lease chatsys-operator -o jsonpath='{.spec.holderIdentity}'
}

leader_is_not() {
  local current
  current=$(leader)
  [[ -n "$current" && "$current" != "$1" ]]
}

config_map_batch_size_is() {
  [[ "$(kubectl_ns get "configmap/$chatsystem-worker" -o jsonpath='{.data.CHATSYS_BATCH_SIZE}')" == "$1" ]]
}

# Kills the pod holding the Lease while the API serves reads; the standby must take over and apply
# an edit, and the API must keep answering.
check_leader_failover() {
  local old_leader new_leader token
  token=$(create_application "failover")
  generate_load "$token" &
  load_pid=$!
  old_leader=$(leader)
  [[ -n "$old_leader" ]] || die "no operator holds the Lease"
  log "killing the leader operator pod $old_leader"
  kubectl -n "$operator_namespace" delete pod "$old_leader" --grace-period=0 --force
  kubectl_ns patch "chatsystem/$chatsystem" --type=merge -p '{"spec":{"worker":{"batch":{"size":900}}}}'
  wait_until "$reconcile_timeout" "another operator replica holds the Lease" leader_is_not "$old_leader"
  new_leader=$(leader)
  wait_until "$reconcile_timeout" "the new leader $new_leader applied the edit" config_map_batch_size_is 900
  curl -fsS --max-time 5 "$base_url/applications/$token" >/dev/null || die "the API stopped answering during the failover"
  stop_load
}

degraded_names_the_mysql_claim() {
  kubectl_ns get "chatsystem/$chatsystem" -o jsonpath='{.status.conditions[?(@.type=="Degraded")].message}' |
    grep -q "PersistentVolumeClaim data-$chatsystem-mysql-0"
}

# kind's default class (local-path) cannot expand volumes: the operator must say so in the status
# and still apply the rest of the same edit.
check_volume_growth_is_reported() {
  log "growing MySQL's volume to 3Gi, with a worker batch size change in the same edit"
  kubectl_ns patch "chatsystem/$chatsystem" --type=merge \
    -p '{"spec":{"mysql":{"storage":{"size":"3Gi"}},"worker":{"batch":{"size":800}}}}'
  wait_until "$reconcile_timeout" "the status names the claim that cannot grow" degraded_names_the_mysql_claim
  wait_until "$reconcile_timeout" "the rest of the edit is applied" config_map_batch_size_is 800
  if kubectl_ns patch "chatsystem/$chatsystem" --type=merge -p '{"spec":{"mysql":{"storage":{"size":"1Gi"}}}}' 2>/dev/null; then
    die "the API server accepted a smaller volume"
  fi
  log "a smaller volume is refused by the schema"
}

# `mysqladmin ping` against MySQL from a throwaway pod in namespace $1 with labels $2: it answers 0
# whenever it reaches the server, even without credentials.
mysql_reachable_from() {
  kubectl -n "$1" run "mysql-probe-$RANDOM" --quiet --rm -i --restart=Never --image=mysql:8.4 \
    --labels="$2" --command -- mysqladmin ping -h "$chatsystem-mysql.$namespace.svc" --connect-timeout=5 \
    >/dev/null 2>&1
}

# The policies are on by default: a pod labelled as the system's API reaches MySQL (so the probe
# works), a pod elsewhere does not (so the policy is enforced).
check_network_policies() {
  local api_labels="app.kubernetes.io/name=chatsys,app.kubernetes.io/instance=$chatsystem,app.kubernetes.io/component=api"
  kubectl_ns get "networkpolicy/$chatsystem-mysql" >/dev/null || die "no NetworkPolicy guards MySQL"
  mysql_reachable_from "$namespace" "$api_labels" || die "a pod labelled as the API cannot reach MySQL"
  if mysql_reachable_from default "run=outsider"; then
    die "a pod outside the ChatSystem reached MySQL: the NetworkPolicy is not enforced"
  fi
  if mysql_reachable_from "$namespace" "app.kubernetes.io/instance=$chatsystem,app.kubernetes.io/component=opensearch"; then
    die "a pod of another component reached MySQL"
  fi
  log "MySQL is reachable from the API's pods only"
}

degraded_reason_is() {
  [[ "$(kubectl_ns get "chatsystem/$chatsystem" -o jsonpath='{.status.conditions[?(@.type=="Degraded")].reason}')" == "$1" ]]
}

not_degraded() {
  [[ "$(kubectl_ns get "chatsystem/$chatsystem" -o jsonpath='{.status.conditions[?(@.type=="Degraded")].status}')" == False ]]
}

monitors_exist() {
  kubectl_ns get servicemonitor "$chatsystem-api" "$chatsystem-worker" "$chatsystem-rabbitmq" >/dev/null &&
    kubectl_ns get prometheusrule "$chatsystem-alerts" >/dev/null
}

# Monitoring asked for without prometheus-operator: the status names its CRDs; once they are
# installed, the monitors and the alerts follow without any edit.
check_monitoring() {
  log "asking for monitoring before prometheus-operator's CRDs exist"
  kubectl_ns patch "chatsystem/$chatsystem" --type=merge -p '{"spec":{"monitoring":{"enabled":true}}}'
  wait_until "$reconcile_timeout" "the status says prometheus-operator's CRDs are missing" \
    degraded_reason_is PrometheusOperatorCRDsNotFound
  log "installing prometheus-operator's CRDs"
  kubectl apply --server-side -f "$prometheus_operator_crds"
  wait_until "$reconcile_timeout" "the monitors and the alerts exist" monitors_exist
  wait_until "$reconcile_timeout" "the ChatSystem is no longer degraded" not_degraded
}

deployment_replicas_above() {
  local replicas
  replicas=$(kubectl_ns get "deployment/$1" -o jsonpath='{.spec.replicas}')
  [[ -n "$replicas" ]] && ((replicas > $2))
}

deployment_replicas_at_most() {
  local replicas
  replicas=$(kubectl_ns get "deployment/$1" -o jsonpath='{.spec.replicas}')
  [[ -n "$replicas" ]] && ((replicas <= $2))
}

scaled_object_is_ready() {
  [[ "$(kubectl_ns get "scaledobject/$chatsystem-worker" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

# Bounded load of message creations in one chat.
generate_writes() {
  local token=$1 chat=$2 requests="$work_dir/writes.curl" i
  for ((i = 0; i < 2000; i++)); do
    printf 'url = "%s/applications/%s/chats/%s/messages"\nheader = "content-type: application/json"\ndata = "{\\"body\\": \\"backlog %s\\"}"\noutput = "/dev/null"\n' \
      "$base_url" "$token" "$chat" "$i"
  done >"$requests"
  repeat_requests "$requests"
}

# The worker on the queue's backlog: before KEDA exists it scales on CPU and the status says so; with
# KEDA, a throttled worker (one command per batch) falls behind a load of writes, the ScaledObject
# adds workers, and once the load stops and the queue drains they go again.
check_backlog_scaling() {
  log "asking for scaling on the queue's backlog before KEDA exists"
  kubectl_ns patch "chatsystem/$chatsystem" --type=merge -p \
    '{"spec":{"worker":{"autoscaling":{"metric":"QueueBacklog","minReplicas":1,"maxReplicas":3,"messagesPerReplica":100},"batch":{"size":1,"waitMs":0,"prefetch":1}}}}'
  wait_until "$reconcile_timeout" "the status says KEDA's CRDs are missing" degraded_reason_is KedaCRDsNotFound
  hpa_is_present worker || die "without KEDA the worker does not scale on CPU"
  log "installing KEDA"
  kubectl apply --server-side -f "$keda_manifest"
  kubectl -n keda rollout status deployment/keda-operator --timeout="${rollout_timeout}s"
  kubectl -n keda rollout status deployment/keda-operator-metrics-apiserver --timeout="${rollout_timeout}s"
  wait_until "$reconcile_timeout" "the worker's ScaledObject is Ready" scaled_object_is_ready
  [[ -z "$(kubectl_ns get horizontalpodautoscaler "$chatsystem-worker" -o name 2>/dev/null)" ]] ||
    die "the operator's CPU HPA of the worker is still there beside KEDA's"
  wait_until "$reconcile_timeout" "the ChatSystem is no longer degraded" not_degraded
  wait_until "$rollout_timeout" "the worker is back to one replica" deployment_replicas_at_most "$chatsystem-worker" 1

  local token chat
  token=$(create_application "backlog")
  chat=$(curl -fsS --max-time 10 -X POST "$base_url/applications/$token/chats" | sed -nE 's/.*"number"[[:space:]]*:[[:space:]]*([0-9]+).*/\1/p')
  [[ -n "$chat" ]] || die "no chat number in the created chat"
  log "queueing a backlog of message creations for up to ${load_timeout}s"
  generate_writes "$token" "$chat" &
  load_pid=$!
  wait_until "$load_timeout" "KEDA grows the worker past one replica" deployment_replicas_above "$chatsystem-worker" 1
  stop_load
  log "the worker has $(kubectl_ns get "deployment/$chatsystem-worker" -o jsonpath='{.spec.replicas}') replicas; waiting for the backlog to drain"
  # The HPA KEDA drives waits 5 minutes of a lower wish before it scales down.
  wait_until "$ready_timeout" "the worker shrinks back to one replica" deployment_replicas_at_most "$chatsystem-worker" 1
  kubectl_ns patch "chatsystem/$chatsystem" --type=merge -p '{"spec":{"worker":{"batch":{"size":1000,"waitMs":20,"prefetch":8000}}}}'
}

api_image_is() {
  [[ "$(kubectl_ns get "deployment/$chatsystem-api" -o jsonpath='{.spec.template.spec.containers[0].image}')" == "$1" ]]
}

chatsystem_is_ready() {
  kubectl_ns wait --for=condition=Ready "chatsystem/$chatsystem" --timeout=5s
}

# Builds the same sources as the next version (a copy with the workspace version bumped), upgrades
# the operator's release to it, and waits for the API and worker to roll to that version's images:
# the ChatSystem names no image, so it follows its operator.
check_operator_upgrade() {
  local version=$1 next="$1-e2e.1" copy="$work_dir/next"
  log "building the next version, $next"
  mkdir -p "$copy"
  (cd "$repo_root" && git ls-files -z | xargs -0 cp --parents -t "$copy")
  sed -i "0,/^version = \"$version\"/s//version = \"$next\"/" "$copy/Cargo.toml"
  (cd "$copy" && cargo update --workspace --offline)
  local target
  for target in api worker operator; do
    docker build --target "$target" --build-arg "VERSION=$next" -t "chatsys/chatsys-$target:$next" "$copy"
  done
  kind load docker-image --name "$cluster" "chatsys/chatsys-api:$next" "chatsys/chatsys-worker:$next" \
    "chatsys/chatsys-operator:$next"
  log "upgrading the operator to $next"
  helm upgrade chatsys-operator "$repo_root/charts/chatsys-operator" --namespace "$operator_namespace" \
    --set "image.tag=$next" --wait --timeout "${rollout_timeout}s"
  wait_until "$ready_timeout" "the API runs chatsys/chatsys-api:$next" api_image_is "chatsys/chatsys-api:$next"
  wait_until "$ready_timeout" "chatsystem/$chatsystem is Ready on $next" chatsystem_is_ready
}

api_is_gone() {
  ! kubectl_ns get "deployment/$chatsystem-api"
}

# Deletes the ChatSystem, checks that MySQL's volume and credentials are kept, applies it again and
# reads the application created before.
check_delete_and_reapply() {
  local token
  token=$(create_application "kept")
  log "deleting chatsystem/$chatsystem with MySQL's volume retained"
  kubectl_ns delete "chatsystem/$chatsystem" --wait=true --timeout="${deletion_timeout}s"
  wait_until "$deletion_timeout" "the API is gone" api_is_gone
  kubectl_ns get "persistentvolumeclaim/data-$chatsystem-mysql-0" >/dev/null || die "MySQL's retained volume is gone"
  kubectl_ns get "secret/$chatsystem-mysql-credentials" >/dev/null || die "MySQL's credentials are gone with the ChatSystem"
  log "applying chatsystem/$chatsystem again"
  kubectl_ns apply -f "$chatsystem_file"
  kubectl_ns wait --for=condition=Ready "chatsystem/$chatsystem" --timeout="${ready_timeout}s"
  wait_until "$rollout_timeout" "the application created before answers" \
    curl -fsS --max-time 5 "$base_url/applications/$token"
}

# The backup drill: backups turned on, a backup taken, a new ChatSystem started from it, and there
# the application, chat and message written before it, with the message found by search (the store
# restored before the migration, the index rebuilt from it after).
check_backup_and_restore() {
  local token chat backup restored="$chatsystem-restored"
  log "turning MySQL's backups on for chatsystem/$chatsystem"
  kubectl_ns patch "chatsystem/$chatsystem" --type merge -p \
    '{"spec":{"mysql":{"backup":{"schedule":"0 3 * * *","keep":3,"target":{"volumeClaim":{"size":"1Gi"}}}}}}'
  wait_until "$reconcile_timeout" "the backup CronJob exists" kubectl_ns get "cronjob/$chatsystem-mysql-backup"
  token=$(create_application "backed-up")
  chat=$(curl -fsS --max-time 10 -X POST "$base_url/applications/$token/chats" |
    sed -nE 's/.*"number"[[:space:]]*:[[:space:]]*([0-9]+).*/\1/p')
  [[ -n "$chat" ]] || die "no chat number"
  curl -fsS --max-time 10 -H 'content-type: application/json' -d '{"body": "kept by the backup drill"}' \
    "$base_url/applications/$token/chats/$chat/messages" >/dev/null
  wait_until "$rollout_timeout" "the message is stored" \
    curl -fsS --max-time 5 "$base_url/applications/$token/chats/$chat/messages/1"
  # Named as the CronJob names its runs (<cronjob>-<minutes since the epoch>), so backups sort in time.
  backup="$chatsystem-mysql-backup-$(($(date +%s) / 60))"
  kubectl_ns create job "$backup" --from="cronjob/$chatsystem-mysql-backup"
  kubectl_ns wait --for=condition=Complete "job/$backup" --timeout="${rollout_timeout}s"
  wait_until "$reconcile_timeout" "status.lastBackup names $backup" \
    test "$(kubectl_ns get "chatsystem/$chatsystem" -o jsonpath='{.status.lastBackup.name}')" = "$backup"

  log "starting chatsystem/$restored from backup $backup"
  kubectl_ns apply -f - <<YAML
apiVersion: chatsys.io/v1alpha1
kind: ChatSystem
metadata:
  name: $restored
spec:
  api: { autoscaling: { enabled: false }, replicas: 1 }
  worker: { autoscaling: { enabled: false }, replicas: 1 }
  mysql:
    storage: { size: 2Gi, deleteClaimsOnRemoval: true }
    restoreFrom: { backup: $backup, claimName: $chatsystem-mysql-backups }
  redis: { storage: { deleteClaimsOnRemoval: true } }
  rabbitmq: { storage: { size: 1Gi, deleteClaimsOnRemoval: true } }
  opensearch: { storage: { size: 2Gi, deleteClaimsOnRemoval: true } }
YAML
  kubectl_ns wait --for=condition=Ready "chatsystem/$restored" --timeout="${ready_timeout}s"
  kubectl_ns port-forward "service/$restored-api" 18081:8080 >/dev/null 2>&1 &
  local forward=$! restored_url=http://127.0.0.1:18081
  wait_until 60 "the restored API is forwarded" curl -fsS --max-time 5 "$restored_url/healthz"
  local status=0
  curl -fsS --max-time 5 "$restored_url/applications/$token/chats/$chat/messages/1" | grep -q 'kept by the backup drill' ||
    status=1
  wait_until "$rollout_timeout" "the restored message is found by search (the index rebuilt)" \
    bash -c "curl -fsS --max-time 5 '$restored_url/applications/$token/chats/$chat/messages/search?q=drill' | grep -q 'kept by the backup drill'" ||
    status=1
  kill "$forward" 2>/dev/null || true
  ((status == 0)) || die "chatsystem/$restored does not hold what the backup held"
  kubectl_ns delete "chatsystem/$restored" --wait=true --timeout="${deletion_timeout}s"
  kubectl_ns delete persistentvolumeclaims,secrets -l "app.kubernetes.io/instance=$restored" --wait=true
  log "backup $backup restored into chatsystem/$restored with its data and its search index"
}

# Delegated mode: with mariadb-operator, RabbitMQ's cluster-operator and the OpenSearch operator
# installed, a ChatSystem that hands MySQL, RabbitMQ and OpenSearch to them comes Ready on their
# resources, stores a message and finds it by search.
check_delegated_mode() {
  local delegated=chat-ha
  log "installing mariadb-operator, RabbitMQ's cluster-operator, cert-manager and the OpenSearch operator"
  helm repo add mariadb-operator https://helm.mariadb.com/mariadb-operator >/dev/null
  helm repo add jetstack https://charts.jetstack.io >/dev/null
  helm repo add opensearch-operator https://opensearch-project.github.io/opensearch-k8s-operator/ >/dev/null
  helm repo update >/dev/null
  helm install mariadb-operator-crds mariadb-operator/mariadb-operator-crds \
    --version "$mariadb_operator_chart_version" --wait --timeout "${rollout_timeout}s"
  helm install mariadb-operator mariadb-operator/mariadb-operator --namespace mariadb-system \
    --create-namespace --version "$mariadb_operator_chart_version" --wait --timeout "${rollout_timeout}s"
  kubectl apply -f "$rabbitmq_cluster_operator_manifest"
  kubectl -n rabbitmq-system rollout status deployment/rabbitmq-cluster-operator --timeout="${rollout_timeout}s"
  helm install cert-manager jetstack/cert-manager --namespace cert-manager --create-namespace \
    --set crds.enabled=true --wait --timeout "${rollout_timeout}s"
  helm install opensearch-operator opensearch-operator/opensearch-operator --namespace opensearch-system \
    --create-namespace --wait --timeout "${rollout_timeout}s"
  kubectl get crd mariadbs.k8s.mariadb.com rabbitmqclusters.rabbitmq.com opensearchclusters.opensearch.opster.io \
    >/dev/null || die "an operator did not serve the API chatsys renders for it"

  log "applying chatsystem/$delegated with every database delegated"
  kubectl_ns apply -f - <<YAML
apiVersion: chatsys.io/v1alpha1
kind: ChatSystem
metadata:
  name: $delegated
spec:
  api: { autoscaling: { enabled: false }, replicas: 1 }
  worker: { autoscaling: { enabled: false }, replicas: 1 }
  mysql:
    provider: mariadb-operator
    image: mariadb:11.4
    replicas: 3
    storage: { size: 1Gi }
  redis: { storage: { deleteClaimsOnRemoval: true } }
  rabbitmq: { provider: rabbitmq-cluster-operator, replicas: 3, storage: { size: 1Gi } }
  opensearch:
    provider: opensearch-operator
    replicas: 3
    storage: { size: 1Gi }
    resources: { requests: { cpu: 200m, memory: 1Gi }, limits: { memory: 1Gi } }
YAML
  kubectl_ns wait --for=condition=Ready "chatsystem/$delegated" --timeout="${ready_timeout}s"
  kubectl_ns port-forward "service/$delegated-api" 18082:8080 >/dev/null 2>&1 &
  local forward=$! url=http://127.0.0.1:18082 token status=0
  wait_until 60 "the delegated system's API is forwarded" curl -fsS --max-time 5 "$url/healthz"
  token=$(curl -fsS --max-time 10 -H 'content-type: application/json' -d '{"name": "ha"}' "$url/applications" |
    sed -nE 's/.*"token"[[:space:]]*:[[:space:]]*"([^"]+)".*/\1/p')
  if [[ -n "$token" ]] && curl -fsS --max-time 10 -X POST "$url/applications/$token/chats" >/dev/null &&
    curl -fsS --max-time 10 -H 'content-type: application/json' -d '{"body": "replicated everywhere"}' \
      "$url/applications/$token/chats/1/messages" >/dev/null; then
    wait_until "$rollout_timeout" "the message is found by search on the delegated OpenSearch" \
      bash -c "curl -fsS --max-time 5 '$url/applications/$token/chats/1/messages/search?q=replicated' | grep -q 'replicated everywhere'" ||
      status=1
  else
    status=1
  fi
  kill "$forward" 2>/dev/null || true
  ((status == 0)) || die "chatsystem/$delegated did not store and find a message on its delegated services"
  kubectl_ns delete "chatsystem/$delegated" --wait=true --timeout="${deletion_timeout}s"
  kubectl_ns delete persistentvolumeclaims -l "app.kubernetes.io/instance=$delegated" --wait=true
  log "chatsystem/$delegated was Ready on mariadb-operator's, cluster-operator's and the OpenSearch operator's resources"
}

owned_kinds=deployments,statefulsets,services,configmaps,secrets,horizontalpodautoscalers,poddisruptionbudgets,ingresses,jobs,cronjobs,pods,networkpolicies,scaledobjects,triggerauthentications,servicemonitors,podmonitors,prometheusrules

owned_objects() {
  kubectl get "$owned_kinds" --all-namespaces -l "app.kubernetes.io/instance=$chatsystem" -o name
}

nothing_owned_is_left() {
  [[ -z "$(owned_objects)" && -z "$(kubectl -n "$namespace" get persistentvolumeclaims -o name)" ]]
}

check_deletion() {
  [[ -n "$(owned_objects)" ]] || die "no object carries app.kubernetes.io/instance=$chatsystem before deletion"
  log "deleting chatsystem/$chatsystem, then the volume and credentials it kept"
  kubectl -n "$namespace" delete "chatsystem/$chatsystem" --wait=true --timeout="${deletion_timeout}s"
  kubectl -n "$namespace" delete persistentvolumeclaims,secrets \
    -l "app.kubernetes.io/instance=$chatsystem,app.kubernetes.io/part-of=chatsys" --wait=true
  if ! wait_until "$deletion_timeout" "every object chatsystem/$chatsystem owned is gone" nothing_owned_is_left; then
    owned_objects >&2 || true
    kubectl -n "$namespace" get persistentvolumeclaims >&2 || true
    die "objects of chatsystem/$chatsystem are left after its deletion"
  fi
}

main() {
  check_prerequisites
  local version
  version=$(workspace_version)
  [[ -n "$version" ]] || die "could not read the workspace version"
  build_conformance_suite
  create_cluster
  build_and_load_images "$version"
  install_ingress_controller
  install_metrics_server
  install_chart "$version"
  apply_chatsystem
  # Autoscaling first, while the system is idle: after the conformance suite the HPA may already have
  # scaled up, and a rise would prove nothing.
  check_autoscaling
  check_ingress_paths
  run_conformance_suite
  check_connection_limit
  check_rollback_is_degraded "$version"
  check_rabbitmq_drain
  check_autoscaling_handover
  check_leader_failover
  check_network_policies
  check_monitoring
  check_backlog_scaling
  check_operator_upgrade "$version"
  check_delete_and_reapply
  check_backup_and_restore
  check_volume_growth_is_reported
  check_deletion
  check_delegated_mode
}

main "$@"
