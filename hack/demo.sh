#!/usr/bin/env bash
# End-to-end demo: builds winflow, starts a local control plane, installs the CRDs, runs the
# operator against the objects in examples/ and shows what it created.
# Without --exit it then keeps everything up until Ctrl-C; with --exit it stops everything and
# exits 0, or non-zero if any step failed.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: hack/demo.sh [--exit] [-h|--help]

Builds target/debug/winflow, starts hack/control-plane.sh, applies crds/ and examples/
(namespace airflow), runs `winflow run` and waits for every WindowsTaskIdentity to be Ready.

  --exit      stop everything once the objects are shown (for scripted runs)
  -h, --help  this text

Needs kubectl on PATH. WINFLOW_KEEP_CONTROL_PLANE=1 keeps the control plane's state
directory (including the operator log) after exit.
EOF
}

exit_when_done=0
while [ $# -gt 0 ]; do
  case "$1" in
    --exit) exit_when_done=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Step headers and hints go to stdout with kubectl's output, so that a transcript
# (`hack/demo.sh --exit | tee demo.log`) reads in order; errors go to stderr.
step() { printf '\n==> %s\n' "$*"; }
log() { echo "demo: $*" >&2; }

command -v kubectl >/dev/null || { log "kubectl is not on PATH"; exit 1; }

cp_pid=""
cp_in=""
operator_pid=""
operator_log=""
waiting_pid=""
provider_pid=""

# alive, start and stop_one; `start` logs to $dir/NAME.log (the control plane's state
# directory, once it runs).
# shellcheck source=hack/processes.sh
. hack/processes.sh

cleanup() {
  local status=$? op_status=0 cp_status=0
  set +e
  trap '' INT TERM
  if [ -n "$waiting_pid" ]; then
    kill "$waiting_pid" 2>/dev/null
    wait "$waiting_pid" 2>/dev/null
  fi
  [ -z "$provider_pid" ] || stop_one oidc-provider "$provider_pid"
  if [ -n "$operator_pid" ]; then
    # Its log helps when something failed (not after Ctrl-C or SIGTERM).
    if [ "$status" -ne 0 ] && [ "$status" -ne 130 ] && [ "$status" -ne 143 ] && [ -f "$operator_log" ]; then
      log "last lines of the operator log ($operator_log):"
      tail -n 40 "$operator_log" >&2
    fi
    # It answers admission for --shutdown-delay (5 s) after SIGTERM before it exits.
    stop_one winflow "$operator_pid" 30
    op_status=$stopped_status
    # 143: the operator ended by the SIGTERM we sent; anything else non-zero is a failure.
    if [ "$op_status" -ne 0 ] && [ "$op_status" -ne 143 ]; then
      log "winflow exited with status $op_status"
      [ "$status" -ne 0 ] || status=1
    fi
  fi
  if [ -n "$cp_pid" ]; then
    # Closing its stdin is the control plane's signal to stop (see hack/control-plane.sh).
    [ -z "$cp_in" ] || exec {cp_in}>&- 2>/dev/null
    wait "$cp_pid"
    cp_status=$?
    # 130/143: Ctrl-C or SIGTERM reached the control plane as well; it stopped cleanly.
    if [ "$cp_status" -ne 0 ] && [ "$cp_status" -ne 130 ] && [ "$cp_status" -ne 143 ]; then
      log "control plane exited with status $cp_status"
    fi
    if [ "$cp_status" -ne 0 ] && [ "$status" -eq 0 ]; then
      status=1
    fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "cargo build --locked"
cargo build --locked
[ -x target/debug/winflow ] || { log "target/debug/winflow was not built"; exit 1; }

step "starting the control plane"
# A coprocess gives us a pipe to its stdin: when this script exits for any reason, the
# pipe closes and the control plane shuts down.
coproc CONTROL_PLANE { exec hack/control-plane.sh; }
cp_pid=$CONTROL_PLANE_PID
cp_out=${CONTROL_PLANE[0]}
cp_in=${CONTROL_PLANE[1]}
line=""
read -r line <&"$cp_out" || true
case "$line" in
  kubeconfig=/*) KUBECONFIG=${line#kubeconfig=} ;;
  *) log "the control plane did not start"; exit 1 ;;
esac
export KUBECONFIG
state_dir=$(dirname "$KUBECONFIG")

step "installing CRDs from crds/"
# Servers before 1.25 refuse the CRDs' CEL rules (x-kubernetes-validations) by server-side
# apply, and would not enforce them: leave them out there.
server_minor=$(kubectl version -o json 2>/dev/null \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["serverVersion"]["minor"].rstrip("+"))')
if [ "$server_minor" -lt 25 ]; then
  for crd in crds/*.yaml; do
    kubectl create --dry-run=client --validate=false -o json -f "$crd" \
      | python3 -c 'import json, sys
def strip(v):
    if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k != "x-kubernetes-validations"}
    if isinstance(v, list):
        return [strip(x) for x in v]
    return v
json.dump(strip(json.load(sys.stdin)), sys.stdout)' \
      | kubectl apply --server-side -f -
  done
else
  kubectl apply --server-side -f crds/
fi
kubectl wait --for condition=established crd --all --timeout=60s

step "creating namespace airflow"
kubectl create namespace airflow

# If this script is killed outright, the kernel stops the provider and the operator too
# (processes.sh starts them under setpriv --pdeathsig); the control plane stops by itself when
# our end of its stdin pipe closes.
dir=$state_dir

free_port() {
  python3 -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
'
}

# The admission webhook's certificate: a throwaway CA and a serving certificate for
# 127.0.0.1, which the API server is told to trust when winflow registers the webhook.
step "webhook certificate (self-signed CA, for this demo only)"
cert_dir=$state_dir/webhook-certs
mkdir -p "$cert_dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj "/CN=winflow demo CA" -keyout "$cert_dir/ca.key" -out "$cert_dir/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=winflow-webhook" \
  -keyout "$cert_dir/tls.key" -out "$cert_dir/tls.csr" 2>/dev/null
openssl x509 -req -in "$cert_dir/tls.csr" -CA "$cert_dir/ca.crt" -CAkey "$cert_dir/ca.key" -CAcreateserial \
  -days 1 -extfile <(printf 'subjectAltName=IP:127.0.0.1') -out "$cert_dir/tls.crt" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$cert_dir/tls.key" -out "$cert_dir/tls.key.pk8" && mv "$cert_dir/tls.key.pk8" "$cert_dir/tls.key"
echo "CA and serving certificate in $cert_dir"

# A local OpenID provider (the npm package oidc-provider, as the tests use) stands in for
# Entra ID or Okta, so the demo can show a token being issued. Plain http on loopback is
# why winflow runs with --allow-insecure-loopback-issuers below; never use that flag with a
# real provider.
step "starting a local OpenID provider (oidc-provider, for this demo only)"
node_modules=$(bash hack/oidc-provider.sh)
client_secret=$(openssl rand -hex 24)
provider_port=$(free_port)
cat >"$state_dir/oidc-provider.json" <<JSON
{"port": $provider_port, "accessTokenTtlSeconds": 3600,
 "clients": [{"clientId": "payroll-export", "clientSecret": "$client_secret", "scope": "payroll.read"}]}
JSON
start oidc-provider env WINFLOW_OIDC_NODE_MODULES="$node_modules" node tests/oidc/provider.mjs \
  --config "$state_dir/oidc-provider.json"
provider_pid=${pids[-1]}
deadline=$((SECONDS + 30))
until grep -q '^ready ' "$state_dir/oidc-provider.log" 2>/dev/null; do
  if ! alive "$provider_pid" || [ "$SECONDS" -ge "$deadline" ]; then
    log "the OpenID provider did not start; its log:"
    cat "$state_dir/oidc-provider.log" >&2
    exit 1
  fi
  sleep 0.2
done
issuer=$(sed -n 's/^ready //p' "$state_dir/oidc-provider.log")
echo "issuer $issuer"

step "starting winflow run (log: $state_dir/winflow.log)"
admin_port=$(free_port)
webhook_port=$(free_port)
operator_log=$state_dir/winflow.log
start winflow target/debug/winflow run --admin-addr "127.0.0.1:$admin_port" --log-format text \
  --cert-dir "$cert_dir" --webhook-addr "127.0.0.1:$webhook_port" \
  --register-webhooks "https://127.0.0.1:$webhook_port" \
  --allow-insecure-loopback-issuers
operator_pid=${pids[-1]}

# The operator's admin server answers /readyz with 200 once its controllers run.
deadline=$((SECONDS + 60))
until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$admin_port/readyz" || true)" = 200 ]; do
  if ! alive "$operator_pid"; then
    log "winflow exited before it was ready"
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    log "winflow not ready after 60 s (http://127.0.0.1:$admin_port/readyz)"
    exit 1
  fi
  sleep 0.5
done
echo "winflow is ready; admin endpoints (/metrics, /livez, /readyz) at http://127.0.0.1:$admin_port"

# Runs a command, failing at once if the operator exits meanwhile (rather than only when
# the command times out).
while_operator_runs() {
  local status=0
  "$@" &
  waiting_pid=$!
  while alive "$waiting_pid"; do
    if ! alive "$operator_pid"; then
      log "winflow exited while waiting for: $*"
      return 1
    fi
    sleep 0.5
  done
  wait "$waiting_pid" || status=$?
  waiting_pid=""
  return "$status"
}

step "applying examples/ in namespace airflow"
kubectl apply -n airflow -f examples/

step "waiting for WindowsShares and WindowsTaskIdentities to be Ready"
while_operator_runs kubectl wait -n airflow --for=condition=Ready wsh --all --timeout=120s
while_operator_runs kubectl wait -n airflow --for=condition=Ready wti --all --timeout=120s

step "kubectl get wti,wsh -n airflow"
kubectl get wti -n airflow
echo
kubectl get wsh -n airflow
step "kubectl get gmsacredentialspecs,persistentvolumes"
kubectl get gmsacredentialspecs
echo
kubectl get persistentvolumes -l app.kubernetes.io/managed-by=winflow
step "objects managed by winflow in namespace airflow"
kubectl get role,rolebinding,serviceaccount,configmap,persistentvolumeclaim -n airflow \
  -l app.kubernetes.io/managed-by=winflow
step "status of identity finance-reports"
kubectl get wti finance-reports -n airflow \
  -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}'

step "least privilege: create pods alone is not enough to use an identity"
# The Airflow worker (listed in payroll-export's spec.access.creators) and an intruder may both
# create pods here; only the worker may use the identity. Pods without the identity label are
# checked too once the namespace is labelled winflow.io/enforce=true.
kubectl create role pod-creator -n airflow --verb=create,get,delete --resource=pods
kubectl create rolebinding pod-creator -n airflow --role=pod-creator \
  --serviceaccount=airflow:airflow-worker --serviceaccount=airflow:intruder
kubectl label namespace airflow winflow.io/enforce=true
while_operator_runs kubectl wait -n airflow --for=condition=Enforced wti --all --timeout=60s
kubectl get wti payroll-export -n airflow -o jsonpath='Enforced: {.status.conditions[?(@.type=="Enforced")].reason}
'
kubectl get rolebinding winflow-payroll-export-use -n airflow \
  -o jsonpath='winflow-payroll-export-use binds: {range .subjects[*]}{.kind}/{.name} {end}
'
worker=(--as=system:serviceaccount:airflow:airflow-worker)

# A task pod as the KubernetesPodOperator creates it; the webhook fills in the identity.
task_pod() {
  cat <<POD
apiVersion: v1
kind: Pod
metadata:
  name: $1
  labels: {winflow.io/identity: payroll-export, dag_id: $2, task_id: upload, kubernetes_pod_operator: "True"}
spec:
  automountServiceAccountToken: false
  restartPolicy: Never
  containers: [{name: base, image: registry.example.com/payroll/export-win:2.0}]
POD
}

step "admission webhook: the worker's pod of DAG payroll_export is admitted with its identity injected"
task_pod payroll-export-upload payroll_export | kubectl create "${worker[@]}" -n airflow -f -
kubectl get pod payroll-export-upload -n airflow -o jsonpath='serviceAccountName: {.spec.serviceAccountName}
nodeSelector: {.spec.nodeSelector}
hostname: {.spec.hostname}
gmsaCredentialSpecName: {.spec.securityContext.windowsOptions.gmsaCredentialSpecName}
runAsUserName: {.spec.securityContext.windowsOptions.runAsUserName}
gmsaCredentialSpec: {.spec.securityContext.windowsOptions.gmsaCredentialSpec}
'

step "admission webhook: a pod of DAG payroll_cleanup is denied"
if task_pod payroll-cleanup-upload payroll_cleanup | kubectl create "${worker[@]}" -n airflow -f - 2>"$state_dir/denied.txt"; then
  log "the pod of payroll_cleanup was admitted; the webhook should have denied it"
  exit 1
fi
cat "$state_dir/denied.txt"

step "admission webhook: the same pod, created by a service account that may not use the identity, is denied"
if task_pod payroll-export-stolen payroll_export \
  | kubectl create --as=system:serviceaccount:airflow:intruder -n airflow -f - 2>"$state_dir/denied.txt"; then
  log "the intruder's pod was admitted; the webhook should have denied it"
  exit 1
fi
cat "$state_dir/denied.txt"

step "OIDC token: payroll-export gets spec.token (client secret in Secret payroll-oidc)"
kubectl create secret generic payroll-oidc -n airflow --from-literal=client-secret="$client_secret"
kubectl patch wti payroll-export -n airflow --type merge -p "{\"spec\": {\"token\": {
  \"issuerUrl\": \"$issuer\", \"clientId\": \"payroll-export\", \"scopes\": [\"payroll.read\"],
  \"clientSecretRef\": {\"name\": \"payroll-oidc\", \"key\": \"client-secret\"}}}}"
while_operator_runs kubectl wait -n airflow --for=condition=TokenReady wti/payroll-export --timeout=60s
kubectl get wti -n airflow
echo
kubectl get wti payroll-export -n airflow -o jsonpath='TokenReady: {.status.conditions[?(@.type=="TokenReady")].reason}: {.status.conditions[?(@.type=="TokenReady")].message}
status.token: {.status.token}
'
# The Secret's keys and annotation, not its values.
kubectl get secret payroll-export-token -n airflow \
  -o go-template='Secret {{.metadata.name}} ({{.type}}): keys{{range $k, $v := .data}} {{$k}}{{end}}; winflow.io/expires-at {{index .metadata.annotations "winflow.io/expires-at"}}{{"\n"}}'

step "admission webhook: a new pod of payroll-export gets the token as env and as a file"
task_pod payroll-export-token-upload payroll_export | kubectl create "${worker[@]}" -n airflow -f -
kubectl get pod payroll-export-token-upload -n airflow \
  -o jsonpath='{range .spec.containers[0].env[*]}{.name}{" "}{.valueFrom.secretKeyRef.name}{.value}{"\n"}{end}{range .spec.containers[0].volumeMounts[*]}mount {.name} at {.mountPath}{"\n"}{end}'

if ! alive "$operator_pid"; then
  log "winflow is no longer running"
  exit 1
fi

if [ "$exit_when_done" = 1 ]; then
  step "done; stopping"
  exit 0
fi

step "running; press Ctrl-C to stop everything"
cat <<EOF
The cluster is yours meanwhile, e.g. from another shell:

  export KUBECONFIG=$KUBECONFIG
  kubectl get wti -n airflow

Operator log: $operator_log
EOF
while :; do
  if ! alive "$operator_pid"; then
    log "winflow exited unexpectedly"
    exit 1
  fi
  if ! alive "$cp_pid"; then
    log "the control plane exited unexpectedly"
    exit 1
  fi
  sleep 1
done
