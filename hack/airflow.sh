#!/usr/bin/env bash
# Runs a real Apache Airflow 3 against a local cluster with a node (hack/control-plane.sh
# --node): PostgreSQL from Debian as the metadata database, `airflow api-server` where the
# worker pods reach it, the scheduler with the KubernetesExecutor and the DAG processor,
# until stdin reaches EOF. stdout carries one line once the scheduler is healthy:
#
#   airflow=http://ADDRESS:PORT HOME
#
# (HOME is AIRFLOW_HOME: airflow.env there holds the settings, for running the `airflow`
# command against this instance). Everything else goes to stderr.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: hack/airflow.sh --kubeconfig FILE --namespace NS --dags DIR --image IMAGE
                       [--address ADDR] [--dir DIR]

  --kubeconfig FILE  what the scheduler's KubernetesExecutor talks to the cluster as (a
                     service account's token, as in a cluster)
  --namespace NS     where it creates the worker pods
  --dags DIR         the DAG folder (the workers have their own copy in IMAGE)
  --image IMAGE      the worker image (hack/image.sh airflow)
  --address ADDR     where the API server listens, reachable from pods (default 10.244.0.1,
                     the local node's bridge)
  --dir DIR          state directory (created; must be empty or absent), default: mktemp -d

The worker pod template (DIR/pod-template.yaml) is what the official chart gives its
workers: container `base` with IMAGE, service account airflow-worker, the setting a worker
needs to reach the API server (AIRFLOW__CORE__EXECUTION_API_SERVER_URL), and the log folder
shared with the API server (the chart's logs.persistence; here a hostPath on the node, which
is this machine).

Environment: WINFLOW_AIRFLOW_PYTHON, the Airflow virtualenv's python (else
hack/airflow-venv.sh provides it); WINFLOW_KEEP_AIRFLOW=1 keeps DIR after exit.
USAGE
}

log() { echo "airflow: $*" >&2; }
die() { log "error: $*"; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
kubeconfig="" namespace="" dags="" image="" address=10.244.0.1 dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --kubeconfig) kubeconfig=$2; shift 2 ;;
    --namespace) namespace=$2; shift 2 ;;
    --dags) dags=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --address) address=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
[ -n "$kubeconfig" ] && [ -n "$namespace" ] && [ -n "$dags" ] && [ -n "$image" ] || { usage >&2; exit 2; }
[ -f "$kubeconfig" ] || die "--kubeconfig $kubeconfig does not exist"
[ -d "$dags" ] || die "--dags $dags is not a directory"
kubeconfig=$(cd "$(dirname "$kubeconfig")" && pwd)/$(basename "$kubeconfig")
dags=$(cd "$dags" && pwd)
pg_bin=/usr/lib/postgresql/15/bin
[ -x "$pg_bin/postgres" ] || die "PostgreSQL 15 is missing: install Debian's postgresql"
[ "$(id -u)" -eq 0 ] || die "needs root (PostgreSQL runs as the postgres user)"

started=$SECONDS
python=${WINFLOW_AIRFLOW_PYTHON:-$(bash "$here/airflow-venv.sh")}
venv_bin=$(dirname "$python")

if [ -n "$dir" ]; then
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
    die "--dir $dir is not empty"
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
else
  dir=$(mktemp -d "${TMPDIR:-/tmp}/winflow-airflow.XXXXXX")
fi
# PostgreSQL's own user must reach its data directory inside.
chmod 755 "$dir"

# shellcheck source=hack/processes.sh
. "$here/processes.sh"

cleanup() {
  local status=$?
  set +e
  trap '' INT TERM
  [ -z "$stdin_pid" ] || kill "$stdin_pid" 2>/dev/null
  stop_all
  remove_state_dir "${WINFLOW_KEEP_AIRFLOW:-}"
  log "stopped"
  exit "$status"
}
exit_through_cleanup

free_port() {
  python3 -c 'import socket, sys
s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$1"
}

# The metadata database: a cluster of its own, trust authentication on loopback only.
pg_port=$(free_port 127.0.0.1)
mkdir -p "$dir/postgres"
chown postgres: "$dir/postgres"
as_postgres() { setpriv --reuid=postgres --regid=postgres --clear-groups "$@"; }
as_postgres "$pg_bin/initdb" -D "$dir/postgres" -A trust -U airflow >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
start postgres setpriv --reuid=postgres --regid=postgres --clear-groups \
  "$pg_bin/postgres" -D "$dir/postgres" -k "$dir/postgres" -h 127.0.0.1 -p "$pg_port"
deadline=$((SECONDS + 30))
until "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port"; do
  check_alive || exit 1
  [ "$SECONDS" -lt "$deadline" ] || die "PostgreSQL not ready after 30 s (see $dir/postgres.log)"
  sleep 0.2
done
"$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U airflow airflow

api_port=$(free_port "$address")
api_url="http://$address:$api_port"
home="$dir/home"
mkdir -p "$home"

# What the official chart gives its KubernetesExecutor workers: the image, their service
# account, and how to reach the API server (Airflow 3 workers never see the database).
cat >"$dir/pod-template.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: airflow-worker
spec:
  serviceAccountName: airflow-worker
  restartPolicy: Never
  containers:
    - name: base
      image: $image
      imagePullPolicy: IfNotPresent
      env:
        - name: AIRFLOW__CORE__EXECUTION_API_SERVER_URL
          value: $api_url/execution/
        - name: AIRFLOW__LOGGING__BASE_LOG_FOLDER
          value: /opt/airflow/logs
      volumeMounts:
        - name: logs
          mountPath: /opt/airflow/logs
  # The chart's logs.persistence: task logs land where the API server reads them.
  volumes:
    - name: logs
      hostPath:
        path: $dir/logs
        type: Directory
EOF
# Workers run as the image's user (uid 50000).
mkdir -p "$dir/logs"
chmod 1777 "$dir/logs"

# Every setting in one file, so that the `airflow` command reads the same as the daemons.
cat >"$home/airflow.env" <<EOF
export AIRFLOW_HOME=$home
export PATH=$venv_bin:\$PATH
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_FOLDER=$dags
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__CORE__EXECUTOR=KubernetesExecutor
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=$api_url/execution/
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgresql+psycopg2://airflow@127.0.0.1:$pg_port/airflow
export AIRFLOW__API__HOST=$address
export AIRFLOW__API__PORT=$api_port
export AIRFLOW__API__BASE_URL=$api_url
export AIRFLOW__API__SECRET_KEY=$(openssl rand -hex 16)
export AIRFLOW__API_AUTH__JWT_SECRET=$(openssl rand -hex 32)
export AIRFLOW__LOGGING__BASE_LOG_FOLDER=$dir/logs
export AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE=$namespace
export AIRFLOW__KUBERNETES_EXECUTOR__IN_CLUSTER=False
export AIRFLOW__KUBERNETES_EXECUTOR__CONFIG_FILE=$kubeconfig
export AIRFLOW__KUBERNETES_EXECUTOR__POD_TEMPLATE_FILE=$dir/pod-template.yaml
# Pods stay after their task, so that status.pods counts them and tests read their logs.
export AIRFLOW__KUBERNETES_EXECUTOR__DELETE_WORKER_PODS=False
# Seconds rather than the defaults' minutes, for a test that waits on them.
export AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC=2
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=5
export AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL=5
EOF
# shellcheck disable=SC1091
. "$home/airflow.env"

log "state directory $dir; migrating the metadata database"
airflow db migrate >"$dir/migrate.log" 2>&1 || { tail -n 30 "$dir/migrate.log" >&2; die "airflow db migrate failed"; }

start api-server airflow api-server --host "$address" --port "$api_port"
start scheduler airflow scheduler
start dag-processor airflow dag-processor

log "waiting for $api_url/api/v2/monitor/health"
deadline=$((SECONDS + 180))
until curl -sf --max-time 5 "$api_url/api/v2/monitor/health" 2>/dev/null \
  | python3 -c 'import json, sys
h = json.load(sys.stdin)
sys.exit(0 if h["scheduler"]["status"] == "healthy" and h["dag_processor"]["status"] == "healthy" else 1)' 2>/dev/null; do
  check_alive || exit 1
  [ "$SECONDS" -lt "$deadline" ] || die "Airflow not healthy after 180 s (see $dir/*.log)"
  sleep 1
done

log "ready in $((SECONDS - started)) s: $api_url"
echo "airflow=$api_url $home"

wait_for_stdin_eof
