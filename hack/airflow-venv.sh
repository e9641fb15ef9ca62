#!/usr/bin/env bash
# Provides a Python virtualenv with Apache Airflow, its cncf.kubernetes provider psycopg2 and asyncpg
# (so that Airflow can keep its metadata in PostgreSQL), used by the tests that feed winflow's
# pod templates to Airflow's own pod builder (tests/airflow/build_pods.py) and baked into the
# local Airflow worker image (`hack/image.sh airflow`), and prints the absolute path of the
# venv's python.
#
# The venv lives outside the checkout, at $WINFLOW_CACHE_DIR/airflow-venv
# (default ~/.cache/winflow/airflow-venv, about 450 MB). It is built once (40-80 s on 2 cores,
# mostly download time) and reused while its pins match and
# `import airflow.providers.cncf.kubernetes, psycopg2, asyncpg` works (about 2 s); otherwise it is rebuilt.
#
# Airflow's constraint files are published on GitHub, which is not reachable from here,
# so only the top-level packages are pinned and pip resolves the rest from PyPI.
# The resolved set is written to $venv/winflow-freeze.txt for the record. The interpreter's
# bundled pip is used as is (not upgraded), so pip itself does not float.
#
# The interpreter is $WINFLOW_PYTHON if set, else python3 on PATH; it must be >= 3.11
# (the provider's floor).
# Progress goes to stderr; stdout carries only the python path.
set -euo pipefail

AIRFLOW_VERSION="3.3.2"
PROVIDER_VERSION="10.25.0"
PINS=(
  "apache-airflow==${AIRFLOW_VERSION}"
  "apache-airflow-providers-cncf-kubernetes==${PROVIDER_VERSION}"
  # A manylinux wheel with its own libpq (psycopg2_binary.libs): nothing to compile.
  "psycopg2-binary==2.9.13"
  # Airflow 3 opens its metadata database asynchronously too (postgresql+asyncpg).
  "asyncpg==0.32.0"
)

cache_root="${WINFLOW_CACHE_DIR:-$HOME/.cache/winflow}"
venv="$cache_root/airflow-venv"
stamp="$venv/winflow-pins.txt"
base_python="${WINFLOW_PYTHON:-python3}"

log() { echo "airflow-venv: $*" >&2; }

# Importing Airflow reads AIRFLOW_HOME and may create files there; keep that out of $HOME.
import_check() {
  local tmp rc
  tmp=$(mktemp -d)
  rc=0
  AIRFLOW_HOME="$tmp" AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$tmp/airflow.db" \
    "$venv/bin/python" -c 'import airflow.providers.cncf.kubernetes, psycopg2, asyncpg' >/dev/null 2>&1 || rc=$?
  rm -rf "$tmp"
  return "$rc"
}

usable() {
  [ -x "$venv/bin/python" ] && [ -f "$stamp" ] &&
    [ "$(cat "$stamp")" = "$(printf '%s\n' "${PINS[@]}")" ] && import_check
}

mkdir -p "$cache_root"
# Tests may call this concurrently: one builds, the others wait and then reuse.
exec 9>"$cache_root/airflow-venv.lock"
flock 9

if usable; then
  echo "$venv/bin/python"
  exit 0
fi

if ! "$base_python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  log "need Python >= 3.11 (set WINFLOW_PYTHON); '$base_python' is $("$base_python" --version 2>&1 || echo missing)"
  exit 1
fi

if [ -e "$venv" ]; then
  log "existing venv at $venv is stale or broken; rebuilding it"
  rm -rf "$venv"
fi

log "creating $venv with ${PINS[*]} (takes a minute or two)"
start=$SECONDS
trap 'rc=$?; if [ "$rc" -ne 0 ]; then log "failed; removing $venv"; rm -rf "$venv"; fi' EXIT
"$base_python" -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}" >&2
"$venv/bin/python" -m pip freeze --disable-pip-version-check >"$venv/winflow-freeze.txt"
if ! import_check; then
  log "installed, but 'import airflow.providers.cncf.kubernetes, psycopg2, asyncpg' fails"
  exit 1
fi
printf '%s\n' "${PINS[@]}" >"$stamp"
trap - EXIT
log "ready in $((SECONDS - start))s: $(grep -iE '^(apache-airflow|apache-airflow-core|apache-airflow-task-sdk|apache-airflow-providers-cncf-kubernetes|kubernetes|psycopg2-binary)==' "$venv/winflow-freeze.txt" | tr '\n' ' ')"
echo "$venv/bin/python"
