//! The container image, without a container runtime: the Dockerfile lints clean with hadolint
//! and describes the image we mean to ship, and the size of the release binary it would hold
//! is printed (and written to `target/release-binary-size.txt`).

#[path = "support/tools.rs"]
mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const MIB: u64 = 1024 * 1024;

/// hadolint from `WINFLOW_HADOLINT` (hack/test.sh exports it), else from hack/hadolint.sh.
fn hadolint() -> PathBuf {
    tools::tool("WINFLOW_HADOLINT", "hadolint.sh")
}

/// One Dockerfile instruction: its stage (0 for the first FROM), keyword in upper case and
/// arguments with line continuations joined.
struct Instruction {
    stage: usize,
    keyword: String,
    args: String,
}

fn instructions(dockerfile: &str) -> Vec<Instruction> {
    let mut logical_lines = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(continued) => current.push_str(continued),
            None => {
                current.push_str(trimmed);
                logical_lines.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stage = 0;
    let mut seen_from = false;
    logical_lines
        .into_iter()
        .map(|line| {
            let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
            let keyword = keyword.to_ascii_uppercase();
            if keyword == "FROM" {
                stage += usize::from(seen_from);
                seen_from = true;
            }
            Instruction {
                stage,
                keyword,
                args: args.split_whitespace().collect::<Vec<_>>().join(" "),
            }
        })
        .collect()
}

#[test]
fn dockerfile_lints_clean() {
    let dir = tempfile::tempdir().unwrap();
    // Our own configuration, so that a user's ~/.config/hadolint.yaml cannot relax the rules;
    // it allows base images from Docker Hub (rust) and gcr.io (distroless) only.
    let config = dir.path().join("hadolint.yaml");
    std::fs::write(&config, "trustedRegistries:\n  - docker.io\n  - gcr.io\n").unwrap();
    let mut lint = Command::new(hadolint());
    lint.arg("--config")
        .arg(&config)
        .args(["--no-color", "--disable-ignore-pragma", "--failure-threshold", "style"])
        .args([
            "--strict-labels",
            "--require-label",
            "org.opencontainers.image.licenses:spdx",
        ])
        .args(
            ["title", "description", "source", "version", "revision"]
                .map(|label| format!("--require-label=org.opencontainers.image.{label}:text")),
        )
        .arg("Dockerfile")
        .current_dir(REPO);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HADOLINT_") {
            lint.env_remove(name);
        }
    }
    let output = lint.output().expect("hadolint runs");
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && findings.trim().is_empty(),
        "hadolint: {}\n{findings}",
        output.status
    );

    let dockerfile = std::fs::read_to_string(Path::new(REPO).join("Dockerfile")).unwrap();
    let instructions = instructions(&dockerfile);
    let last_stage = instructions.last().unwrap().stage;
    let final_stage: Vec<&Instruction> = instructions.iter().filter(|i| i.stage == last_stage).collect();
    let in_final = |keyword: &str| -> Vec<&str> {
        final_stage
            .iter()
            .filter(|i| i.keyword == keyword)
            .map(|i| i.args.as_str())
            .collect()
    };

    assert_eq!(in_final("FROM"), ["gcr.io/distroless/cc-debian12:nonroot"]);
    // The runtime image has no shell: a RUN there could not even be built.
    assert_eq!(in_final("RUN"), Vec::<&str>::new());
    let user = *in_final("USER").last().expect("the final stage sets USER");
    assert!(
        user.split(':').all(|part| part != "root" && part != "0"),
        "USER {user} is root"
    );
    assert_eq!(user, "65532:65532", "distroless's nonroot user, by number");
    assert_eq!(in_final("ENTRYPOINT"), [r#"["/winflow"]"#]);
    assert_eq!(in_final("CMD"), [r#"["run"]"#]);
    assert_eq!(in_final("ENV"), ["WINFLOW_LOG_FORMAT=json"]);
    assert_eq!(in_final("EXPOSE"), ["8080 9443"]);
    let labels = in_final("LABEL").join(" ");
    for label in ["title", "description", "source", "licenses", "version", "revision"] {
        assert!(
            labels.contains(&format!("org.opencontainers.image.{label}=")),
            "label org.opencontainers.image.{label} missing: {labels}"
        );
    }
    assert!(
        labels.contains(r#"org.opencontainers.image.licenses="Apache-2.0""#),
        "{labels}"
    );

    let builds: Vec<&str> = instructions
        .iter()
        .filter(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .map(|i| i.args.as_str())
        .collect();
    assert!(
        !builds.is_empty() && builds.iter().all(|b| b.contains("cargo build --release --locked")),
        "{builds:?}"
    );
    // What the build stages copy from the context must exist (the image is not built in CI).
    for copy in instructions
        .iter()
        .filter(|i| i.keyword == "COPY" && !i.args.starts_with("--from"))
    {
        let paths: Vec<&str> = copy.args.split(' ').filter(|a| !a.starts_with("--")).collect();
        for source in &paths[..paths.len() - 1] {
            assert!(Path::new(REPO).join(source).exists(), "COPY {source}: no such file");
        }
    }
}

/// The target directory of this very test run (the one holding debug/).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_winflow"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_owned()
}

/// target/release/winflow, brought up to date by this test (cargo does nothing when it
/// already is), and how long that took.
fn release_binary(target_dir: &Path) -> (PathBuf, String) {
    let binary = target_dir.join("release/winflow");
    // `cargo test` holds the target directory's lock only while it builds, so this nested
    // build can share the directory (and its compiled dependencies) with it.
    let start = Instant::now();
    let output = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--locked", "--bin", "winflow", "--target-dir"])
        .arg(target_dir)
        .current_dir(REPO)
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo build --release failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (
        binary,
        format!("cargo build --release: {:.0} s", start.elapsed().as_secs_f64()),
    )
}

#[test]
fn release_binary_size_is_printed() {
    let target_dir = target_dir();
    let (binary, how) = release_binary(&target_dir);
    let size = std::fs::metadata(&binary).unwrap().len();
    let line = format!(
        "release binary: {size} bytes ({:.1} MiB), {} ({how})",
        size as f64 / MIB as f64,
        binary.display()
    );
    println!("{line}");
    std::fs::write(target_dir.join("release-binary-size.txt"), format!("{line}\n")).unwrap();
    assert!(size > MIB, "{line}: too small to be the operator");

    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .expect("the release binary runs");
    assert!(version.status.success(), "{}", String::from_utf8_lossy(&version.stderr));
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        concat!("winflow ", env!("CARGO_PKG_VERSION"))
    );
    let crds = Command::new(&binary)
        .arg("crds")
        .output()
        .expect("the release binary runs");
    assert!(crds.status.success(), "{}", String::from_utf8_lossy(&crds.stderr));
    assert!(String::from_utf8_lossy(&crds.stdout).contains("kind: CustomResourceDefinition"));
}
