//! `winflow run` as a process: kubeconfig from the environment, the admin server's
//! endpoints, reconciliation, and a clean exit on SIGTERM.

use winflow_test_support as support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::process::{free_address, http_get};
use support::{TestEnv, wait_until};
use winflow::api::WindowsTaskIdentity;

#[tokio::test]
async fn winflow_run_serves_admin_endpoints_reconciles_and_stops_on_sigterm() {
    let env = TestEnv::new("binary").await;
    let addr = free_address();
    let mut process = Command::new(env!("CARGO_BIN_EXE_winflow"))
        .args([
            "run",
            "--namespace",
            &env.namespace,
            "--admin-addr",
            &addr,
            "--log-format",
            "json",
        ])
        .env("KUBECONFIG", support::kubeconfig_path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(Running)
        .expect("winflow run starts");

    let live = wait_until("/livez", Duration::from_secs(30), || http_get(&addr, "/livez")).await;
    assert_eq!(live.0, 200);
    wait_until("/readyz 200", Duration::from_secs(30), || async {
        let (status, _) = http_get(&addr, "/readyz").await?;
        (status == 200).then_some(())
    })
    .await;

    support::apply_file(&env, "examples/identity-azure-key-vault.yaml").await;
    let _: WindowsTaskIdentity = support::wait_for_condition(&env, "payroll-export", "Ready", "True", None).await;
    // The reconcile is counted as it returns, just after its status write.
    let metrics = wait_until("the reconcile is counted", Duration::from_secs(10), || async {
        let (status, metrics) = http_get(&addr, "/metrics").await?;
        (status == 200 && metrics.contains(r#"winflow_reconciles_total{controller="identity",result="success"}"#))
            .then_some(metrics)
    })
    .await;
    assert!(
        metrics.contains(r#"winflow_reconciles_total{controller="identity",result="success"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"winflow_api_writes_total{kind="GMSACredentialSpec",verb="apply"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"winflow_reconcile_duration_seconds_count{controller="identity"}"#),
        "{metrics}"
    );
    for process_metric in [
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
    ] {
        assert!(metrics.contains(process_metric), "{process_metric}missing: {metrics}");
    }

    let term = Command::new("kill")
        .args(["-TERM", &process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = process.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "winflow did not exit within 30 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "winflow exited with {exit}");
    let mut logs = String::new();
    std::io::Read::read_to_string(process.0.stderr.as_mut().unwrap(), &mut logs).unwrap();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["message"] == "shutting down"), "{logs}");
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "applied" && l["kind"] == "GMSACredentialSpec"),
        "{logs}"
    );
}

/// Until the caches have their first list, /readyz says so: here the API server never answers.
#[tokio::test]
async fn readyz_fails_until_the_caches_are_synced() {
    // A listener that accepts connections and never answers, standing in for an API server.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: silent\n\
             clusters: [{{name: silent, cluster: {{server: 'https://{}', insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: silent, user: {{token: not-a-real-token}}}}]\n\
             contexts: [{{name: silent, context: {{cluster: silent, user: silent}}}}]\n",
            silent.local_addr().unwrap()
        ),
    )
    .unwrap();
    let addr = free_address();
    let process = Command::new(env!("CARGO_BIN_EXE_winflow"))
        .args(["run", "--admin-addr", &addr])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Running)
        .expect("winflow run starts");
    let live = wait_until("/livez", Duration::from_secs(30), || http_get(&addr, "/livez")).await;
    assert_eq!(live.0, 200, "alive");
    // Several looks over three seconds: never ready.
    for _ in 0..6 {
        let (status, body) = http_get(&addr, "/readyz").await.unwrap();
        assert_eq!((status, body.as_str()), (503, "caches not synced"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(process);
}

/// The operator process, killed if the test ends early, so that a failed assertion never
/// leaves it running.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
