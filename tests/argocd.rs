//! The Argo CD health checks in `deploy/argocd/`, run by Lua 5.1 (the Lua Argo CD embeds) against
//! objects in `tests/argocd/recorded/`, and the `argocd-cm` patch that ships them. No cluster
//! needed; `lua5.1` and `lua-cjson` must be installed (Debian packages of those names).
//!
//! The recorded objects are `kubectl get -o json` output of objects winflow reconciled on a real
//! API server (minus the last-applied annotation), except where the table says "edited": states
//! the operator does not reach today, made from a recorded object to cover a rule.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const IDENTITY_SCRIPT: &str = "deploy/argocd/health-windowstaskidentity.lua";
const SHARE_SCRIPT: &str = "deploy/argocd/health-windowsshare.lua";
const RUNNER: &str = "tests/argocd/run-health.lua";
const RECORDED: &str = "tests/argocd/recorded";
const CM_PATCH: &str = "deploy/argocd/argocd-cm-patch.yaml";
const APPLICATION: &str = "examples/argocd/application.yaml";
const INSTALL_HINT: &str = "run `apt-get install lua5.1 lua-cjson` (Argo CD's health checks are Lua 5.1)";

/// File in `tests/argocd/recorded/`, expected health, a substring of the expected message.
const CASES: &[(&str, &str, &str)] = &[
    (
        "windowstaskidentity-healthy.json",
        "Healthy",
        "the credential spec, access rights and pod templates are in place",
    ),
    (
        "windowstaskidentity-healthy-token-issued.json",
        "Healthy",
        "the credential spec, access rights and pod templates are in place",
    ),
    (
        "windowstaskidentity-healthy-token-backoff.json",
        "Healthy",
        "in place; warning: TokenReady Backoff: refreshing the token failed 3 time(s) in a row",
    ),
    (
        "windowstaskidentity-healthy-tasks-failing.json",
        "Healthy",
        "in place; warning: TasksHealthy=False, AuthenticationFailures: task pod payroll-export-upload (dag payroll_export, task upload) failed with LogonFailure",
    ),
    // Enforced=False (the namespace lacks winflow.io/enforce=true) is not part of Ready.
    (
        "windowstaskidentity-healthy-namespace-not-enforced.json",
        "Healthy",
        "the credential spec, access rights and pod templates are in place",
    ),
    (
        "windowstaskidentity-progressing-no-status.json",
        "Progressing",
        "waiting for winflow to reconcile generation 1",
    ),
    (
        "windowstaskidentity-progressing-old-generation.json",
        "Progressing",
        "waiting for winflow to reconcile generation 2 (the status describes generation 1)",
    ),
    // Edited: Ready of an older generation than the rest of the status.
    (
        "windowstaskidentity-progressing-ready-stale.json",
        "Progressing",
        "waiting for winflow to reconcile generation 3 (Ready describes generation 2)",
    ),
    // Edited: Ready=Unknown.
    (
        "windowstaskidentity-progressing-ready-unknown.json",
        "Progressing",
        "Reconciling: winflow restarted",
    ),
    (
        "windowstaskidentity-progressing-share-missing.json",
        "Progressing",
        "ShareNotReady: SharesReady: WindowsShare legal-archive-share does not exist",
    ),
    (
        "windowstaskidentity-progressing-share-not-ready.json",
        "Progressing",
        "ShareNotReady: SharesReady: WindowsShare hr-payslips is not Ready (SecretMissing: Secret smb-hr does not exist",
    ),
    (
        "windowstaskidentity-progressing-service-account-missing.json",
        "Progressing",
        "ServiceAccountMissing: AccessGranted: service account audit-export does not exist",
    ),
    // Edited: no token request made yet (TokenReady=False, Backoff).
    (
        "windowstaskidentity-progressing-token-first-attempt.json",
        "Progressing",
        "Backoff: TokenReady: no token yet (no attempt yet)",
    ),
    (
        "windowstaskidentity-degraded-invalid-spec.json",
        "Degraded",
        "InvalidSpec: spec.pod.runAsUserName: ContainerAdministrator is refused unless spec.pod.allowAdministrator is true",
    ),
    (
        "windowstaskidentity-degraded-conflict.json",
        "Degraded",
        "Conflict: PodTemplateReady: ConfigMap sales-etl-pod-templates exists and is not managed by winflow",
    ),
    (
        "windowstaskidentity-degraded-token-expired.json",
        "Degraded",
        "Expired: TokenReady: the token expired at 2026-11-29T01:53:16Z and could not be refreshed",
    ),
    (
        "windowstaskidentity-degraded-provider-unavailable.json",
        "Degraded",
        "ProviderUnavailable: TokenReady: issuer \"https://127.0.0.1:9/tenant\" did not answer its discovery request",
    ),
    (
        "windowstaskidentity-degraded-invalid-issuer.json",
        "Degraded",
        "InvalidIssuer: TokenReady: spec.token.issuerUrl \"http://127.0.0.1:18555\" uses plain http",
    ),
    (
        "windowsshare-healthy.json",
        "Healthy",
        "PersistentVolumeClaim legal-archive-share is bound to PersistentVolume airflow.legal-archive-share",
    ),
    (
        "windowsshare-progressing-no-status.json",
        "Progressing",
        "waiting for winflow to reconcile generation 1",
    ),
    (
        "windowsshare-progressing-old-generation.json",
        "Progressing",
        "waiting for winflow to reconcile generation 2 (the status describes generation 1)",
    ),
    (
        "windowsshare-progressing-pending.json",
        "Progressing",
        "Pending: waiting for PersistentVolumeClaim legal-archive-share to bind",
    ),
    // Edited: Ready=Unknown.
    (
        "windowsshare-progressing-ready-unknown.json",
        "Progressing",
        "Reconciling: winflow restarted",
    ),
    (
        "windowsshare-degraded-secret-missing.json",
        "Degraded",
        "SecretMissing: Secret smb-hr does not exist",
    ),
    (
        "windowsshare-degraded-secret-lacks-keys.json",
        "Degraded",
        "SecretMissing: Secret smb-ops lacks the key(s) password",
    ),
    (
        "windowsshare-degraded-invalid-spec.json",
        "Degraded",
        "InvalidSpec: spec.server: \"fs01.corp.example.com/sales\" must be only the server's name",
    ),
    (
        "windowsshare-degraded-conflict.json",
        "Degraded",
        "Conflict: PersistentVolumeClaim marketing-assets exists and is not managed by winflow",
    ),
    // A bound share whose capacity was then changed: the claim of a static volume cannot grow.
    (
        "windowsshare-degraded-api-error.json",
        "Degraded",
        "ApiError: the API server refused PersistentVolumeClaim finance-reports-share",
    ),
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Fails (never skips) when Lua 5.1 or its JSON module is missing.
fn require_lua() {
    let probe = Command::new("lua5.1")
        .args(["-e", "require 'cjson'"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run lua5.1 ({e}): {INSTALL_HINT}"));
    assert!(
        probe.status.success(),
        "lua5.1 cannot load cjson ({}): {INSTALL_HINT}",
        String::from_utf8_lossy(&probe.stderr).trim()
    );
}

fn script_for(file: &str) -> &'static str {
    if file.starts_with("windowstaskidentity-") {
        IDENTITY_SCRIPT
    } else if file.starts_with("windowsshare-") {
        SHARE_SCRIPT
    } else {
        panic!("{file}: recorded files are named windowstaskidentity-<case>.json or windowsshare-<case>.json")
    }
}

/// Runs the health script on a recorded object: (status, message).
fn health(script: &str, object: &Path) -> Result<(String, String), String> {
    let output = Command::new("lua5.1")
        .arg(RUNNER)
        .arg(script)
        .arg(object)
        .current_dir(repo())
        .output()
        .map_err(|e| format!("cannot run lua5.1 ({e}): {INSTALL_HINT}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "lua5.1 {RUNNER} {script} {} failed ({}): {}{}",
            object.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr),
            stdout
        ));
    }
    let result: serde_json::Value =
        serde_json::from_str(stdout.trim()).map_err(|e| format!("output {stdout:?} is not JSON: {e}"))?;
    let field = |name: &str| result[name].as_str().map(str::to_owned);
    match (field("status"), field("message")) {
        (Some(status), Some(message)) => Ok((status, message)),
        _ => Err(format!("output {stdout:?} lacks status or message")),
    }
}

#[test]
fn recorded_objects_get_the_specified_health() {
    require_lua();
    let mut failures = Vec::new();
    for (file, status, message) in CASES {
        let object = repo().join(RECORDED).join(file);
        match health(script_for(file), &object) {
            Ok((got_status, got_message)) => {
                if got_status != *status || !got_message.contains(message) {
                    failures.push(format!(
                        "{file}: got {got_status} {got_message:?}; want {status} with a message containing {message:?}"
                    ));
                }
            }
            Err(e) => failures.push(format!("{file}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
    eprintln!("{} recorded objects got the expected health", CASES.len());
}

#[test]
fn every_recorded_object_has_an_expectation_and_every_health_is_covered() {
    let found: BTreeSet<String> = std::fs::read_dir(repo().join(RECORDED))
        .unwrap_or_else(|e| panic!("{RECORDED}: {e}"))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = CASES.iter().map(|(file, _, _)| (*file).to_owned()).collect();
    assert_eq!(listed.len(), CASES.len(), "a recorded file is listed twice");
    assert_eq!(found, listed, "files in {RECORDED} and the CASES table differ");

    for (file, status, _) in CASES {
        let object: serde_json::Value =
            serde_json::from_str(&read(&format!("{RECORDED}/{file}"))).unwrap_or_else(|e| panic!("{file}: {e}"));
        let kind = if script_for(file) == IDENTITY_SCRIPT {
            "WindowsTaskIdentity"
        } else {
            "WindowsShare"
        };
        assert_eq!(object["kind"], kind, "{file}");
        assert_eq!(object["apiVersion"], "winflow.io/v1alpha1", "{file}");
        let prefix = format!("{}-{}", kind.to_lowercase(), status.to_lowercase());
        assert!(file.starts_with(&prefix), "{file} should be named {prefix}-<case>.json");
    }
    for kind in ["windowstaskidentity", "windowsshare"] {
        for status in ["Healthy", "Progressing", "Degraded"] {
            assert!(
                CASES
                    .iter()
                    .any(|(file, s, _)| *s == status && file.starts_with(&format!("{kind}-"))),
                "no recorded {kind} that is {status}"
            );
        }
    }
}

fn data_entry<'a>(patch: &'a serde_yaml_ng::Value, key: &str) -> &'a str {
    patch["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{CM_PATCH}: data has no string {key}"))
}

#[test]
fn argocd_cm_patch_embeds_exactly_the_health_scripts() {
    let patch: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read(CM_PATCH)).unwrap_or_else(|e| panic!("{CM_PATCH}: {e}"));
    assert_eq!(patch["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(patch["metadata"]["name"].as_str(), Some("argocd-cm"));
    assert_eq!(patch["metadata"]["namespace"].as_str(), Some("argocd"));
    for (kind, script) in [("WindowsTaskIdentity", IDENTITY_SCRIPT), ("WindowsShare", SHARE_SCRIPT)] {
        let key = format!("resource.customizations.health.winflow.io_{kind}");
        assert!(
            data_entry(&patch, &key) == read(script),
            "{CM_PATCH}: {key} differs from {script}; copy the script into the patch (indented, after `|`)"
        );
    }

    let finalizer = r#".metadata.finalizers[]? | select(. == "winflow.io/cleanup")"#;
    let ca_bundle = ".webhooks[]?.clientConfig.caBundle";
    for (group_kind, expression) in [
        ("winflow.io_WindowsTaskIdentity", finalizer),
        ("winflow.io_WindowsShare", finalizer),
        ("admissionregistration.k8s.io_MutatingWebhookConfiguration", ca_bundle),
        ("admissionregistration.k8s.io_ValidatingWebhookConfiguration", ca_bundle),
    ] {
        let key = format!("resource.customizations.ignoreDifferences.{group_kind}");
        let rule: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(data_entry(&patch, &key)).unwrap_or_else(|e| panic!("{CM_PATCH}: {key}: {e}"));
        let expressions: Vec<&str> = rule["jqPathExpressions"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{CM_PATCH}: {key} has no jqPathExpressions"))
            .iter()
            .filter_map(serde_yaml_ng::Value::as_str)
            .collect();
        assert_eq!(expressions, [expression], "{CM_PATCH}: {key}");
    }
}

#[test]
fn example_application_syncs_into_airflow_with_server_side_apply() {
    let app: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read(APPLICATION)).unwrap_or_else(|e| panic!("{APPLICATION}: {e}"));
    assert_eq!(app["apiVersion"].as_str(), Some("argoproj.io/v1alpha1"));
    assert_eq!(app["kind"].as_str(), Some("Application"));
    assert_eq!(app["spec"]["destination"]["namespace"].as_str(), Some("airflow"));
    let options: Vec<&str> = app["spec"]["syncPolicy"]["syncOptions"]
        .as_sequence()
        .expect("spec.syncPolicy.syncOptions")
        .iter()
        .filter_map(serde_yaml_ng::Value::as_str)
        .collect();
    for option in ["ServerSideApply=true", "CreateNamespace=true"] {
        assert!(options.contains(&option), "{APPLICATION}: syncOptions lack {option}");
    }
}
