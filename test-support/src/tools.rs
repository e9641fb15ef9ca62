//! Tools the tests run (helm, hadolint, the Airflow venv's python, the OpenID provider's node
//! modules): from the environment variable hack/test.sh exports, or else from the hack/ script
//! that installs it into the cache. A missing tool fails the test with what to do.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The path in `$variable`, or what `hack/<script>` prints (its progress goes to stderr).
pub fn tool(variable: &str, script: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "{variable}={} does not exist; unset it to have hack/{script} provide it",
            path.display()
        );
        return path;
    }
    let output = Command::new("bash")
        .arg(Path::new(crate::REPO).join("hack").join(script))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("bash runs hack/{script}: {e}"));
    assert!(
        output.status.success(),
        "hack/{script} could not provide what this test needs (its messages are above); or set {variable}"
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}
