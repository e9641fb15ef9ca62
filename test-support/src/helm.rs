//! helm, run the same way by every test: the binary from WINFLOW_HELM or hack/helm.sh, and
//! its caches and configuration in the build's temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::REPO;

fn helm_binary() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| crate::tools::tool("WINFLOW_HELM", "helm.sh"))
}

/// Runs helm in the repository with its caches and configuration in the build's temporary
/// directory (nothing of the user's helm or kubectl setup is read or written), talking to
/// the test control plane when `kubeconfig` is given.
pub fn run_helm(args: &[&str], kubeconfig: Option<&Path>) -> std::process::Output {
    let home = crate::target::tmp_dir().join("chart-helm-home");
    let mut command = Command::new(helm_binary());
    command
        .current_dir(REPO)
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env("KUBECACHEDIR", home.join("kube-cache"))
        .env(
            "KUBECONFIG",
            kubeconfig.map_or_else(|| home.join("no-kubeconfig"), Path::to_path_buf),
        );
    command.output().expect("helm runs")
}

/// helm's standard output; panics with its messages when it fails.
pub fn helm(args: &[&str], kubeconfig: Option<&Path>) -> String {
    let output = run_helm(args, kubeconfig);
    assert!(
        output.status.success(),
        "helm {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `helm` on a blocking thread, so that an operator running in the test keeps running.
pub async fn helm_async(args: Vec<String>, kubeconfig: Option<PathBuf>) -> String {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        helm(&args, kubeconfig.as_deref())
    })
    .await
    .unwrap()
}
