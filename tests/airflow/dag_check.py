#!/usr/bin/env python3
"""Load examples/airflow/dags/payroll_export.py in Apache Airflow and build its pods.

Usage (with the python printed by hack/airflow-venv.sh):

    python tests/airflow/dag_check.py --dag-file PATH --pod-templates DIR

DIR is laid out like the ConfigMap mounts in values-airflow.yaml:
``DIR/payroll-export/windows-pod-template.yaml`` and ``.../executor-pod-template.yaml`` (as
``winflow render`` prints them). The DAG reads DIR from ``WINFLOW_POD_TEMPLATES``.

What it does, all with Airflow's own code:

1. parses the file with Airflow's ``DagBag`` twice: without ``WINFLOW_POD_TEMPLATES`` (the paths
   a deployment uses, reported as ``deployed_paths``) and with it (everything below), asserting
   no import errors; the DAG also goes through ``DagSerialization`` to and from JSON, as the
   dag-processor hands it to the scheduler, and ``upload``'s ``executor_config`` is read from the
   deserialized copy (what the KubernetesExecutor receives);
2. ``export_ledger``: asserts it is a ``KubernetesPodOperator`` with ``do_xcom_push=False`` and the
   Windows template, renders its templated fields and builds the pod with the operator's own
   ``build_pod_request_obj`` (``dry_run=True``: no cluster), then asserts what winflow's webhook
   relies on (container ``base``, Windows node selector, gMSA credential spec, identity, dag_id
   and task_id labels);
3. ``upload``: builds the worker pod with ``PodGenerator.construct_pod`` from the executor
   template named in ``executor_config`` (read with the executor's ``get_base_pod_from_template``,
   with ``pod_override`` from ``PodGenerator.from_obj``, as the executor does) and asserts the
   identity label and the ``WINFLOW_*`` environment.

Prints one JSON summary on stdout; Airflow's own output goes to stderr. Exit status 0 when every
assertion holds, 1 otherwise (the message says which), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import traceback
from types import SimpleNamespace

DAG_ID = "payroll_export"
IDENTITY = "payroll-export"
RUN_ID = "scheduled__2026-11-28T00:00:00+00:00"
LOGICAL_DATE = "2026-11-28"
# What the official chart sets as [kubernetes_executor] worker_container_repository:tag.
CHART_WORKER_IMAGE = "apache/airflow:3.3.2"


class CheckFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def isolate_airflow() -> str:
    """A throwaway AIRFLOW_HOME, no inherited AIRFLOW_* settings, a DB that is never touched."""
    for name in [n for n in os.environ if n.startswith("AIRFLOW")]:
        os.environ.pop(name)
    home = tempfile.mkdtemp(prefix="winflow-dag-check-")
    os.environ.update(
        {
            "AIRFLOW_HOME": home,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": home,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/unused.db",
        }
    )
    return home


def load_dag(dag_file: str, pod_templates: str | None):
    from airflow.dag_processing.dagbag import DagBag

    if pod_templates is None:
        os.environ.pop("WINFLOW_POD_TEMPLATES", None)
    else:
        os.environ["WINFLOW_POD_TEMPLATES"] = pod_templates
    bag = DagBag(dag_folder=dag_file, safe_mode=False)
    check(not bag.import_errors, f"import errors: {json.dumps(bag.import_errors, indent=2)}")
    check(list(bag.dags) == [DAG_ID], f"expected exactly the DAG {DAG_ID}, got {list(bag.dags)}")
    return bag.dags[DAG_ID]


def env_names(container) -> list[str]:
    return [e.name for e in container.env or []]


def kpo_pod(dag, task):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    check(isinstance(task, KubernetesPodOperator), f"export_ledger is a {type(task).__name__}")
    check(task.do_xcom_push is False, "export_ledger must set do_xcom_push=False (the sidecar is Linux)")
    # Only the keys the operator's label builder reads, plus those the arguments' Jinja uses.
    ti = SimpleNamespace(dag_id=DAG_ID, task_id=task.task_id, map_index=-1, try_number=1)
    context = {"ti": ti, "run_id": RUN_ID, "dag": dag, "ds": LOGICAL_DATE}
    task.render_template_fields(context)
    task.name = task._set_name(task.name)  # as execute() does before building the pod
    return task.build_pod_request_obj(context, dry_run=True)


def template_image(path: str) -> str | None:
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    return PodGenerator.deserialize_model_file(path).spec.containers[0].image


def executor_pod(task, executor_config: dict):
    from airflow.providers.cncf.kubernetes.executors.kubernetes_executor_utils import (
        get_base_pod_from_template,
    )
    from airflow.providers.cncf.kubernetes.kubernetes_helper_functions import create_unique_id
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    template = executor_config.get("pod_template_file")
    check(bool(template) and os.path.isfile(template), f"executor template {template!r} does not exist")
    return PodGenerator.construct_pod(
        namespace="airflow",
        scheduler_job_id="1",
        pod_id=create_unique_id(DAG_ID, task.task_id),
        dag_id=DAG_ID,
        task_id=task.task_id,
        kube_image=CHART_WORKER_IMAGE,
        try_number=1,
        map_index=-1,
        date=None,
        run_id=RUN_ID,
        # The executor passes the workload's command here; it does not affect what is checked.
        args=["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string", "{}"],
        pod_override_object=PodGenerator.from_obj(executor_config),
        base_worker_pod=get_base_pod_from_template(template, None),
        with_mutation_hook=True,
    )


def run(dag_file: str, pod_templates: str) -> dict:
    from airflow.serialization.serialized_objects import DagSerialization

    deployed = load_dag(dag_file, None)
    deployed_paths = {
        "windows": deployed.get_task("export_ledger").pod_template_file,
        "executor": deployed.get_task("upload").executor_config.get("pod_template_file"),
    }

    dag = load_dag(dag_file, pod_templates)
    templates = os.path.join(pod_templates, IDENTITY)
    windows_template = os.path.join(templates, "windows-pod-template.yaml")
    executor_template = os.path.join(templates, "executor-pod-template.yaml")
    check(
        sorted(t.task_id for t in dag.tasks) == ["export_ledger", "upload"],
        f"tasks: {[t.task_id for t in dag.tasks]}",
    )
    serialized = DagSerialization.from_dict(DagSerialization.to_dict(dag))

    export = dag.get_task("export_ledger")
    check(export.pod_template_file == windows_template, f"export_ledger uses {export.pod_template_file}")
    pod = kpo_pod(dag, export)
    spec, labels = pod.spec, pod.metadata.labels
    base = spec.containers[0]
    gmsa = spec.security_context.windows_options if spec.security_context else None
    check(len(spec.containers) == 1 and base.name == "base", f"containers: {[c.name for c in spec.containers]}")
    check((spec.node_selector or {}).get("kubernetes.io/os") == "windows", f"nodeSelector: {spec.node_selector}")
    check(gmsa is not None and bool(gmsa.gmsa_credential_spec_name), "no gmsaCredentialSpecName")
    check(labels.get("winflow.io/identity") == IDENTITY, f"labels: {labels}")
    check(labels.get("dag_id") == DAG_ID and labels.get("task_id") == "export_ledger", f"labels: {labels}")
    check(LOGICAL_DATE in base.args[0], "the PowerShell arguments were not rendered")
    check("$env:WINFLOW_TOKEN_FILE" in base.args[0], "the PowerShell script does not read WINFLOW_TOKEN_FILE")

    upload = dag.get_task("upload")
    executor_config = serialized.get_task("upload").executor_config
    check(
        executor_config.get("pod_template_file") == executor_template,
        f"upload's executor_config after serialization: {executor_config}",
    )
    worker = executor_pod(upload, executor_config)
    worker_labels, worker_base = worker.metadata.labels, worker.spec.containers[0]
    check(worker_labels.get("winflow.io/identity") == IDENTITY, f"worker labels: {worker_labels}")
    check(worker.metadata.annotations.get("dag_id") == DAG_ID, f"worker annotations: {worker.metadata.annotations}")
    check(worker.metadata.annotations.get("task_id") == "upload", f"worker annotations: {worker.metadata.annotations}")
    for name in ("WINFLOW_IDENTITY", "WINFLOW_GMSA_ACCOUNT", "WINFLOW_DOMAIN"):
        check(name in env_names(worker_base), f"worker env lacks {name}: {env_names(worker_base)}")

    return {
        "dag_id": dag.dag_id,
        "schedule": str(dag.schedule),
        "catchup": dag.catchup,
        "tasks": sorted(t.task_id for t in dag.tasks),
        "deployed_paths": deployed_paths,
        "export_ledger": {
            "operator": type(export).__name__,
            "do_xcom_push": export.do_xcom_push,
            "get_logs": export.get_logs,
            "on_finish_action": str(export.on_finish_action.value),
            "retries": export.retries,
            "retry_delay_seconds": export.retry_delay.total_seconds(),
            "pod_template_file": export.pod_template_file,
            "cmds": base.command,
            "namespace": pod.metadata.namespace,
            "container": base.name,
            "image": base.image,
            "node_selector": spec.node_selector,
            "os": spec.os.name if spec.os else None,
            "service_account": spec.service_account_name,
            "gmsa_credential_spec_name": gmsa.gmsa_credential_spec_name,
            "labels": labels,
            "env": env_names(base),
            "volume_mounts": [m.mount_path for m in base.volume_mounts or []],
        },
        "upload": {
            "operator": type(upload).__name__,
            "retries": upload.retries,
            "executor_config": executor_config,
            "container": worker_base.name,
            # The executor replaces the template's image (the identity's workerImage) with its
            # kube_image whenever [kubernetes_executor] worker_container_repository is set, as
            # the official chart does.
            "image": worker_base.image,
            "template_image": template_image(executor_config["pod_template_file"]),
            "service_account": worker.spec.service_account_name,
            "labels": worker_labels,
            "annotations": {k: worker.metadata.annotations[k] for k in ("dag_id", "task_id")},
            "env": env_names(worker_base),
            "volume_mounts": [m.mount_path for m in worker_base.volume_mounts or []],
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dag-file", required=True, help="examples/airflow/dags/payroll_export.py")
    parser.add_argument("--pod-templates", required=True, help="directory holding payroll-export/<template>.yaml")
    args = parser.parse_args()

    # stdout is for the JSON only: keep a handle on it and send everything else to stderr.
    sys.stdout.flush()
    summary_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)

    home = isolate_airflow()
    try:
        summary = run(os.path.abspath(args.dag_file), os.path.abspath(args.pod_templates))
    except CheckFailed as failure:
        print(f"dag_check: FAILED: {failure}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as missing:
        print(f"dag_check: {missing}; run this with the python that hack/airflow-venv.sh prints", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        print("dag_check: FAILED: Airflow raised the error above", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(home, ignore_errors=True)
    json.dump(summary, summary_out, indent=2, default=str)
    summary_out.write("\n")
    summary_out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
