"""Payroll export: a Windows task as the gMSA svc-payroll, then a Linux upload, through winflow.

The WindowsTaskIdentity ``payroll-export`` (examples/identity-azure-key-vault.yaml) allows the
DAG ids ``payroll_export`` and ``payroll_backfill_*`` and the task ids ``export_*`` and
``upload``. winflow keeps two Airflow pod templates for it in the ConfigMap
``payroll-export-pod-templates``, which values-airflow.yaml mounts as a directory in the
scheduler and the workers:

* ``export_ledger`` runs on a Windows node with the KubernetesPodOperator and
  ``windows-pod-template.yaml``: container ``base``, the identity's image, its service account
  and gMSA credential spec;
* ``upload`` runs under the KubernetesExecutor in a Linux worker pod built from
  ``executor-pod-template.yaml`` (``executor_config``), which carries the identity's label,
  service account and ``WINFLOW_*`` variables.

Both pods carry the label ``winflow.io/identity: payroll-export`` (from the template, and for the
KubernetesPodOperator also from ``labels=``) and the ``dag_id``/``task_id`` labels Airflow adds, so
winflow's admission webhook checks them against the identity's allow-list and fills in what the
identity implies. A pod of another DAG with that label is refused.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG, task

# The ConfigMap payroll-export-pod-templates, mounted as a directory by values-airflow.yaml. (The
# variable is for tests that render the templates elsewhere; in a deployment leave it unset.)
POD_TEMPLATES = os.environ.get("WINFLOW_POD_TEMPLATES", "/opt/airflow/pod-templates") + "/payroll-export"

# Runs in the `base` container on Windows, as CORP\svc-payroll: Windows authentication
# (-UseDefaultCredentials, SMB, SQL Server) uses the gMSA. The OIDC access token (when the identity
# has spec.token) is in $env:WINFLOW_ACCESS_TOKEN, fixed when the container starts, and in the
# file $env:WINFLOW_TOKEN_FILE, which follows every rotation: a task that may run longer than the
# token's minValidity reads the file right before each call.
EXPORT_LEDGER = r"""
$ErrorActionPreference = 'Stop'
Write-Output ('export of {0} as {1}\{2}' -f '{{ ds }}', $env:WINFLOW_DOMAIN, $env:WINFLOW_GMSA_ACCOUNT)
$ledger = Invoke-RestMethod -UseDefaultCredentials -Uri 'https://ledger.corp.example.com/api/export?date={{ ds }}'
$tokenFile = $env:WINFLOW_TOKEN_FILE
if ($tokenFile -and (Test-Path $tokenFile)) {
    $headers = @{ Authorization = 'Bearer ' + (Get-Content -Raw -Path $tokenFile).Trim() }
    $body = $ledger | ConvertTo-Json -Depth 10
    Invoke-RestMethod -Method Post -Headers $headers -ContentType 'application/json' -Body $body -Uri 'https://payroll.example.com/api/ledgers/{{ ds }}'
} else {
    Write-Output 'the identity has no spec.token: not publishing to the payroll API'
}
"""

with DAG(
    dag_id="payroll_export",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    tags=["winflow", "windows"],
    default_args={
        # winflow's webhook denies a task pod when the identity's OIDC token is missing or would
        # expire sooner than its minValidity (or the pod's winflow.io/min-token-validity): the
        # pod is never created and the task fails at once with a message saying when a fresh
        # token is due. The retry, after retry_delay, runs the task again with the renewed
        # token, instead of a task that fails halfway through with an expired one.
        "retries": 3,
        "retry_delay": timedelta(minutes=2),
    },
) as dag:
    export_ledger = KubernetesPodOperator(
        task_id="export_ledger",
        name="payroll-export-ledger",
        namespace="airflow",
        # The Windows pod of the identity: no `image=`, the template names the identity's image
        # (spec.airflow.image); service account, node selector, tolerations and gMSA come from it.
        pod_template_file=f"{POD_TEMPLATES}/windows-pod-template.yaml",
        # The XCom sidecar is a Linux image, and a pod cannot mix Linux and Windows containers.
        do_xcom_push=False,
        # Also in the template; named here so that the pod keeps it whatever the template holds.
        labels={"winflow.io/identity": "payroll-export"},
        cmds=["powershell.exe", "-Command"],
        arguments=[EXPORT_LEDGER],
        get_logs=True,
        on_finish_action="delete_pod",
        # Windows images are large: the first pull on a node takes minutes.
        startup_timeout_seconds=900,
    )

    @task(executor_config={"pod_template_file": f"{POD_TEMPLATES}/executor-pod-template.yaml"})
    def upload(ds: str | None = None) -> None:
        """Runs under the KubernetesExecutor in the identity's Linux worker pod.

        The executor builds this task's pod from winflow's executor template instead of the
        chart's default one, so it runs with the identity's service account and WINFLOW_*
        environment (and the token, when the identity has spec.token), but without the chart's
        volumes and configuration: see "KubernetesExecutor notes" in examples/airflow/README.md.
        """
        import json
        import urllib.request

        token_file = os.environ.get("WINFLOW_TOKEN_FILE")
        if not token_file or not os.path.exists(token_file):
            print(f"identity {os.environ.get('WINFLOW_IDENTITY')}: no OIDC token; nothing to upload")
            return
        # Read the file, not WINFLOW_ACCESS_TOKEN: the file follows each rotation.
        with open(token_file, encoding="utf-8") as stream:
            token = stream.read().strip()
        request = urllib.request.Request(
            f"https://payroll.example.com/api/ledgers/{ds}/publish",
            data=json.dumps({"source": "payroll_export"}).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            print(f"published the ledger of {ds}: HTTP {response.status}")

    export_ledger >> upload()
