"""DAGs that tests/airflow_e2e.rs runs on a real Airflow 3 with the KubernetesExecutor.

The worker pods come from the Airflow deployment's own pod template (hack/airflow.sh writes
one like the official chart's: image, service account airflow-worker, the API server's URL).
A task that runs as the winflow identity ``payroll-export`` says so in its
``executor_config``: the identity label, the executor role and the identity's service
account. winflow's webhook then checks the DAG and task ids and the creator (the scheduler's
service account), and fills in the rest: the ``WINFLOW_*`` variables and the token.

* ``payroll_export``: ``upload`` runs as the identity and checks what it was given, and
  ``export_ledger`` (a chart worker, no identity) creates the identity's Windows pod from
  winflow's template with the KubernetesPodOperator;
* ``payroll_cleanup``: a DAG id the identity does not allow; its task is never started;
* ``payroll_backfill_token``: asks for more token validity than the identity's current token
  has left, so its first try is denied until winflow has renewed the token.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime, timedelta, timezone

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG, task
from kubernetes.client import models as k8s

IDENTITY = "payroll-export"
TEMPLATES = "/opt/airflow/pod-templates/" + IDENTITY
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def as_identity(min_token_validity: str | None = None) -> dict:
    """The executor_config of a task that runs as the identity."""
    annotations = {"winflow.io/min-token-validity": min_token_validity} if min_token_validity else None
    return {
        "pod_override": k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(
                labels={"winflow.io/identity": IDENTITY, "winflow.io/role": "executor"},
                annotations=annotations,
            ),
            spec=k8s.V1PodSpec(service_account_name=IDENTITY, containers=[k8s.V1Container(name="base")]),
        )
    }


def report_identity() -> None:
    """What the task was given, printed without the token: its file, its expiry, and the
    service account from the claims of the pod's own service-account token."""
    expires_at = os.environ["WINFLOW_TOKEN_EXPIRES_AT"]
    expiry = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    with open(os.environ["WINFLOW_TOKEN_FILE"]) as f:
        token = f.read().strip()
    if not token or token != os.environ["WINFLOW_ACCESS_TOKEN"]:
        raise RuntimeError("the token file and WINFLOW_ACCESS_TOKEN differ")
    left = (expiry - datetime.now(timezone.utc)).total_seconds()
    if left <= 0:
        raise RuntimeError(f"the token expired at {expires_at}")
    with open("/var/run/secrets/kubernetes.io/serviceaccount/token") as f:
        claims = f.read().split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    account = claims.get("kubernetes.io/serviceaccount/service-account.name") or claims["sub"].rsplit(":", 1)[-1]
    print(
        "winflow-e2e:",
        json.dumps(
            {
                "identity": os.environ["WINFLOW_IDENTITY"],
                "gmsa_account": os.environ["WINFLOW_GMSA_ACCOUNT"],
                "domain": os.environ["WINFLOW_DOMAIN"],
                "service_account": account,
                "token_file": "present",
                "token_expires_at": expires_at,
                "token_valid_seconds": int(left),
            }
        ),
    )


with DAG(dag_id="payroll_export", schedule=None, start_date=START, catchup=False):

    @task(task_id="upload", executor_config=as_identity())
    def upload() -> None:
        report_identity()

    # A chart worker (its own service account, airflow-worker) with winflow's Windows template
    # mounted, as examples/airflow/values-airflow.yaml mounts it; it creates the Windows pod.
    # There is no Windows node here: the pod stays Pending until startup_timeout_seconds.
    export_ledger = KubernetesPodOperator(
        task_id="export_ledger",
        name="payroll-export-ledger",
        pod_template_file=f"{TEMPLATES}/windows-pod-template.yaml",
        labels={"winflow.io/identity": IDENTITY},
        cmds=["powershell.exe", "-Command"],
        arguments=["Write-Output 'export as' $env:WINFLOW_GMSA_ACCOUNT"],
        do_xcom_push=False,
        get_logs=True,
        startup_timeout_seconds=30,
        on_finish_action="keep_pod",
        retries=0,
        executor_config={
            "pod_override": k8s.V1Pod(
                spec=k8s.V1PodSpec(
                    containers=[
                        k8s.V1Container(
                            name="base",
                            volume_mounts=[k8s.V1VolumeMount(name="pod-templates", mount_path=TEMPLATES)],
                        )
                    ],
                    volumes=[
                        k8s.V1Volume(
                            name="pod-templates",
                            config_map=k8s.V1ConfigMapVolumeSource(name=f"{IDENTITY}-pod-templates"),
                        )
                    ],
                )
            )
        },
    )

    upload()


with DAG(dag_id="payroll_cleanup", schedule=None, start_date=START, catchup=False):

    @task(task_id="upload", executor_config=as_identity(), retries=0)
    def cleanup_upload() -> None:
        report_identity()

    cleanup_upload()


with DAG(dag_id="payroll_backfill_token", schedule=None, start_date=START, catchup=False):

    @task(
        task_id="upload",
        executor_config=as_identity(min_token_validity="60s"),
        retries=12,
        retry_delay=timedelta(seconds=5),
    )
    def backfill_upload() -> None:
        report_identity()

    backfill_upload()
