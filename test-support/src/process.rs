//! `winflow run` as a separate process, for tests and benchmarks that kill it (`kill -9`),
//! restart it, or measure its memory.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback address no one listens on yet, for an admin server.
pub fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// A minimal HTTP/1.1 GET, enough for the admin endpoints: (status code, body).
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A running `winflow run`, killed if the caller ends early, so that a failed assertion
/// never leaves it running.
pub struct OperatorProcess {
    child: Child,
    /// Where its admin server (`/metrics`, `/readyz`) listens.
    pub admin_addr: String,
}

impl OperatorProcess {
    /// Starts `winflow run --admin-addr <free> <args>` with `kubeconfig`; its logs go to
    /// `log` (appended), or nowhere.
    pub fn start(kubeconfig: &Path, args: &[&str], log: Option<&Path>) -> OperatorProcess {
        let admin_addr = free_address();
        let stderr = match log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap(),
            ),
            None => Stdio::null(),
        };
        let child = Command::new(crate::target::winflow_binary())
            .arg("run")
            .args(["--admin-addr", &admin_addr, "--log-format", "json"])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("winflow run starts");
        OperatorProcess { child, admin_addr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `/readyz` answers 200 (caches synced, leadership joined).
    pub async fn wait_ready(&self) {
        crate::wait_until("winflow /readyz 200", Duration::from_secs(60), || async {
            let (status, _) = http_get(&self.admin_addr, "/readyz").await?;
            (status == 200).then_some(())
        })
        .await;
    }

    /// Its `/metrics` text, or `None` while it does not answer.
    pub async fn metrics(&self) -> Option<String> {
        let (status, body) = http_get(&self.admin_addr, "/metrics").await?;
        (status == 200).then_some(body)
    }

    /// The sum of its metric samples whose line starts with `prefix`; 0 when it does not answer.
    pub async fn metric_sum(&self, prefix: &str) -> u64 {
        self.metrics().await.map(|text| sum_samples(&text, prefix)).unwrap_or(0)
    }

    /// A memory figure of `/proc/<pid>/status` in KiB, e.g. `VmRSS` (resident memory), `VmHWM`
    /// (its peak), `RssAnon` (heap and stacks) or `RssFile` (pages of the binary and libraries).
    pub fn status_kib(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in KiB in {path}"))
    }

    /// Resident memory as the kernel reports it (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.status_kib("VmRSS") * 1024
    }

    /// `kill -9`: no shutdown, no lease release, requests cut off mid-flight.
    pub fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to 30 s for the exit; true when it exited successfully.
    pub async fn terminate(mut self) -> bool {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                return exit.success();
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The sum of the samples in Prometheus text whose line starts with `prefix`.
pub fn sum_samples(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A copy of the admin kubeconfig `admin` in `dir` whose user acts as `user` (impersonation,
/// group `system:masters`), so the API server's audit log tells this process's writes apart.
pub fn kubeconfig_acting_as(admin: &Path, dir: &Path, user: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(admin).unwrap();
    let mut config: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    for entry in config["users"].as_sequence_mut().expect("kubeconfig users") {
        let auth = &mut entry["user"];
        auth["as"] = user.into();
        auth["as-groups"] = serde_yaml_ng::Value::Sequence(vec!["system:masters".into()]);
    }
    let path = dir.join(format!("kubeconfig-{user}"));
    std::fs::write(&path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    path
}
