#!/usr/bin/env python3
"""Feed winflow's pod templates to Apache Airflow's own pod builder.

Usage (with the python printed by hack/airflow-venv.sh):

    python tests/airflow/build_pods.py --windows-template PATH --executor-template PATH

Prints one JSON document on stdout:

    {"windows_template": pod, "executor_template": pod, "kpo_pod": pod, "executor_pod": pod}

each pod as ``ApiClient().sanitize_for_serialization(pod)`` gives it (the camelCase body Airflow
sends to the API server):

* ``windows_template`` / ``executor_template``: the templates as read by
  ``PodGenerator.deserialize_model_file``, the reader of the KubernetesExecutor and of the
  KubernetesPodOperator (KPO) for a ``pod_template_file``.
* ``kpo_pod``: the pod a ``KubernetesPodOperator`` with ``pod_template_file=<windows template>``
  would create, from the operator's own ``build_pod_request_obj``.
* ``executor_pod``: the worker pod the KubernetesExecutor would create with the executor
  template as its ``pod_template_file``, from ``PodGenerator.construct_pod`` called with the
  arguments the executor passes it.

Nothing about pod building is reimplemented here. What stands in for production:

* the KPO's task context is a minimal dict (``ti``, ``run_id``, ``dag``): the only keys
  ``build_pod_request_obj`` reads, through ``_get_ti_pod_labels``;
* ``build_pod_request_obj`` runs with ``dry_run=True`` because there is no cluster: that skips
  only the ``airflow_kpo_in_cluster`` label, which needs a live Kubernetes client config;
* the executor's container args come from Airflow's ``workload_to_command_args`` on an
  ``ExecuteTask`` workload built directly (production builds it from the database row); the
  executor additionally adds a ``task_instance_id`` annotation and ``ti_id`` label after
  ``construct_pod``, which are not reproduced.

The kubernetes client drops fields it does not know when it deserializes a template, silently,
so a template field that Airflow would lose is an error here (exit 1), unless
``--allow-dropped-fields`` is given (then it is only reported on stderr).

Airflow runs hermetically: ``AIRFLOW_HOME`` is a fresh temporary directory, inherited
``AIRFLOW_*`` variables are dropped, examples are off and the metadata DB (never used) would be
a SQLite file in that directory. Everything Airflow logs or prints goes to stderr; stdout
carries only the JSON. Exit status: 0 on success, 1 on any failure, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import traceback
import uuid

DAG_ID = "finance_reports"
TASK_ID = "copy_reports"
RUN_ID = "manual__2026-11-28T00:00:00+00:00"
NAMESPACE = "airflow"
TRY_NUMBER = 1
MAP_INDEX = -1
SCHEDULER_JOB_ID = "1"
KPO_IMAGE = "mcr.microsoft.com/windows/servercore:ltsc2022"
KPO_CMDS = ["powershell.exe", "-Command", "Get-ChildItem"]


def fail(message: str) -> None:
    raise SystemExit(f"build_pods: error: {message}")


def claim_stdout():
    """Keep the real stdout for the JSON and point fd 1 at stderr for everything else.

    Airflow's default logging config writes to sys.stdout; redirecting at the file-descriptor
    level also covers handlers that captured sys.stdout and anything printed by C code.
    """
    sys.stdout.flush()
    real = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    return real


def hermetic_airflow_env() -> str:
    for key in list(os.environ):
        if key.startswith("AIRFLOW_") or key.startswith("AIRFLOW__"):
            del os.environ[key]
    home = tempfile.mkdtemp(prefix="winflow-airflow-home-")
    os.environ["AIRFLOW_HOME"] = home
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = os.path.join(home, "dags")
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home}/airflow.db"
    return home


def dropped_fields(raw, got, path: str = "") -> list[str]:
    """Paths whose value in the template (raw YAML) is missing or different after the round trip."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        if not isinstance(got, dict):
            return [f"{path or '.'}: became {got!r}"]
        out = []
        for key, value in raw.items():
            sub = f"{path}.{key}"
            if value is None:
                continue
            if key not in got:
                out.append(f"{sub}: dropped")
            else:
                out.extend(dropped_fields(value, got[key], sub))
        return out
    if isinstance(raw, list):
        if not isinstance(got, list) or len(got) != len(raw):
            return [f"{path}: list became {got!r}"]
        out = []
        for i, (r, g) in enumerate(zip(raw, got)):
            out.extend(dropped_fields(r, g, f"{path}[{i}]"))
        return out
    if raw != got:
        return [f"{path}: {raw!r} became {got!r}"]
    return []


def read_template(path: str):
    """Read a pod_template_file the way the executor and the KPO do."""
    import yaml
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
    from kubernetes.client import ApiClient

    # deserialize_model_file only logs a warning for a missing file; make that an error.
    if not os.path.isfile(path):
        fail(f"template {path} does not exist")
    pod = PodGenerator.deserialize_model_file(path)
    if pod is None or pod.spec is None:
        fail(f"template {path} did not deserialize to a pod with a spec")
    serialized = ApiClient().sanitize_for_serialization(pod)
    with open(path, encoding="utf-8") as stream:
        raw = yaml.safe_load(stream)
    return serialized, dropped_fields(raw, serialized)


def build_kpo_pod(windows_template: str):
    import datetime
    from types import SimpleNamespace

    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk import DAG

    with DAG(
        dag_id=DAG_ID,
        schedule=None,
        start_date=datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc),
        catchup=False,
    ) as dag:
        op = KubernetesPodOperator(
            task_id=TASK_ID,
            name="copy-reports",
            namespace=NAMESPACE,
            image=KPO_IMAGE,
            cmds=KPO_CMDS,
            pod_template_file=windows_template,
            do_xcom_push=False,
            labels={"team": "finance"},
        )
    # The keys _get_ti_pod_labels reads; at run time these come from the task runner.
    ti = SimpleNamespace(dag_id=DAG_ID, task_id=TASK_ID, map_index=MAP_INDEX, try_number=TRY_NUMBER)
    context = {"ti": ti, "run_id": RUN_ID, "dag": dag}
    # KubernetesPodOperator.execute() normalizes the name before building the pod.
    op.name = op._set_name(op.name)
    return op.build_pod_request_obj(context, dry_run=True)


def build_executor_pod(executor_template: str, kube_image: str | None):
    from pathlib import Path

    from airflow.executors.workloads import BundleInfo, ExecuteTask
    from airflow.executors.workloads.task import TaskInstanceDTO
    from airflow.providers.cncf.kubernetes.executors.kubernetes_executor_utils import (
        get_base_pod_from_template,
    )
    from airflow.providers.cncf.kubernetes.kubernetes_helper_functions import create_unique_id
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator, workload_to_command_args

    ns = uuid.UUID("6f1c1f3e-0000-4000-8000-000000000000")
    workload = ExecuteTask(
        ti=TaskInstanceDTO(
            id=uuid.uuid5(ns, f"{DAG_ID}/{TASK_ID}/{RUN_ID}"),
            dag_version_id=uuid.uuid5(ns, DAG_ID),
            dag_id=DAG_ID,
            task_id=TASK_ID,
            run_id=RUN_ID,
            try_number=TRY_NUMBER,
            map_index=MAP_INDEX,
            pool_slots=1,
            priority_weight=1,
        ),
        dag_rel_path=Path(f"{DAG_ID}.py"),
        bundle_info=BundleInfo(name="dags-folder"),
        log_path=f"dag_id={DAG_ID}/run_id={RUN_ID}/task_id={TASK_ID}/attempt={TRY_NUMBER}.log",
        token="",
    )
    # The same call, with the same arguments, as AirflowKubernetesScheduler._build_pod_request.
    return PodGenerator.construct_pod(
        namespace=NAMESPACE,
        scheduler_job_id=SCHEDULER_JOB_ID,
        pod_id=create_unique_id(DAG_ID, TASK_ID),
        dag_id=DAG_ID,
        task_id=TASK_ID,
        kube_image=kube_image,
        try_number=TRY_NUMBER,
        map_index=MAP_INDEX,
        date=None,
        run_id=RUN_ID,
        args=workload_to_command_args(workload),
        pod_override_object=None,
        base_worker_pod=get_base_pod_from_template(executor_template, None),
        with_mutation_hook=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows-template", required=True, help="Windows task pod_template_file (for the KPO)")
    parser.add_argument("--executor-template", required=True, help="KubernetesExecutor pod_template_file")
    parser.add_argument(
        "--executor-image",
        default=None,
        help="the executor's kube_image ([kubernetes_executor] worker_container_repository:tag); "
        "'' for none, as when those options are unset (default: apache/airflow:<installed version>)",
    )
    parser.add_argument(
        "--allow-dropped-fields",
        action="store_true",
        help="report template fields the kubernetes client drops on stderr instead of failing",
    )
    args = parser.parse_args()
    windows_template = os.path.abspath(args.windows_template)
    executor_template = os.path.abspath(args.executor_template)

    out = claim_stdout()
    home = hermetic_airflow_env()
    try:
        from kubernetes.client import ApiClient

        result = {}
        problems = []
        for key, path in (("windows_template", windows_template), ("executor_template", executor_template)):
            result[key], dropped = read_template(path)
            problems.extend(f"{path}: {d}" for d in dropped)
        if problems:
            message = "the kubernetes client did not keep these template fields:\n  " + "\n  ".join(problems)
            if not args.allow_dropped_fields:
                fail(message)
            print(f"build_pods: warning: {message}", file=sys.stderr)

        if args.executor_image is None:
            from airflow.version import version as airflow_version

            args.executor_image = f"apache/airflow:{airflow_version}"
        api = ApiClient()
        result["kpo_pod"] = api.sanitize_for_serialization(build_kpo_pod(windows_template))
        result["executor_pod"] = api.sanitize_for_serialization(
            build_executor_pod(executor_template, args.executor_image or None)
        )
    except SystemExit:
        raise
    except ModuleNotFoundError as exc:
        fail(f"{exc}; run this with the python that hack/airflow-venv.sh prints")
    except Exception as exc:  # any Airflow failure: say so clearly, keep the traceback on stderr
        traceback.print_exc()
        fail(f"{type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(home, ignore_errors=True)

    json.dump(result, out, indent=2)
    out.write("\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
