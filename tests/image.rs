//! The container image, without a container runtime: the Dockerfile lints clean with hadolint
//! and describes the image we mean to ship, the size of the release binary it would hold
//! is printed (and written to `target/release-binary-size.txt`), and the image hack/image.sh
//! writes for the local cluster has the Dockerfile's runtime configuration around that binary.

use winflow_test_support::tools;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

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
    for source in copied_sources(&instructions) {
        assert!(Path::new(REPO).join(source).exists(), "COPY {source}: no such file");
    }
}

/// What the Dockerfile's build stages copy from the context, as paths in the repository.
fn copied_sources(instructions: &[Instruction]) -> Vec<&str> {
    let mut sources = Vec::new();
    for copy in instructions
        .iter()
        .filter(|i| i.keyword == "COPY" && !i.args.starts_with("--from"))
    {
        let paths: Vec<&str> = copy.args.split(' ').filter(|a| !a.starts_with("--")).collect();
        sources.extend_from_slice(&paths[..paths.len() - 1]);
    }
    sources
}

/// Cargo loads every member of the workspace and every path dependency even to build the
/// binary alone, so the build context must hold them all: the copied sources alone are a
/// workspace cargo can load.
#[test]
fn dockerfile_build_context_is_the_whole_workspace() {
    let dockerfile = std::fs::read_to_string(Path::new(REPO).join("Dockerfile")).unwrap();
    let instructions = instructions(&dockerfile);
    let context = tempfile::tempdir().unwrap();
    for source in copied_sources(&instructions) {
        let copied = Command::new("cp")
            .arg("-r")
            .arg(Path::new(REPO).join(source))
            .arg(context.path().join(source))
            .status()
            .expect("cp runs");
        assert!(copied.success(), "cp -r {source}");
    }
    let metadata = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["metadata", "--no-deps", "--offline", "--format-version", "1"])
        .current_dir(context.path())
        .output()
        .expect("cargo runs");
    assert!(
        metadata.status.success(),
        "cargo cannot load the Dockerfile's build context:\n{}",
        String::from_utf8_lossy(&metadata.stderr)
    );
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
    let mut build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    build
        .args(["build", "--release", "--locked", "--bin", "winflow", "--target-dir"])
        .arg(target_dir)
        .current_dir(REPO);
    // What cargo sets for this test crate (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...) must not
    // reach the nested build: ring's build script reruns when they change, so the release
    // build would be redone at each switch between a build from a shell (or hack/image.sh)
    // and one from here. hack/image.sh removes the same variables.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_BIN_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            || ["CARGO_CRATE_NAME", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"].contains(&&*name)
        {
            build.env_remove(&*name);
        }
    }
    let output = build.output().expect("cargo runs");
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

/// One member of a ustar archive (hack/image-archive.py writes no PAX records).
struct TarEntry<'a> {
    kind: u8,
    mode: u32,
    uid: u32,
    data: &'a [u8],
}

/// The members of a tar archive by name (without a trailing slash).
fn tar_entries(archive: &[u8]) -> BTreeMap<String, TarEntry<'_>> {
    fn text(field: &[u8]) -> &str {
        let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
        std::str::from_utf8(&field[..end]).expect("a UTF-8 tar header field")
    }
    fn octal(field: &[u8]) -> usize {
        usize::from_str_radix(text(field).trim(), 8).expect("an octal tar header field")
    }
    let mut entries = BTreeMap::new();
    let mut offset = 0;
    while offset + 512 <= archive.len() && archive[offset..offset + 512].iter().any(|&b| b != 0) {
        let header = &archive[offset..offset + 512];
        assert_eq!(&header[257..262], b"ustar", "a ustar header at byte {offset}");
        let (name, prefix) = (text(&header[..100]), text(&header[345..500]));
        let name = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        };
        let size = octal(&header[124..136]);
        let data = &archive[offset + 512..offset + 512 + size];
        let entry = TarEntry {
            kind: header[156],
            mode: octal(&header[100..108]) as u32,
            uid: octal(&header[108..116]) as u32,
            data,
        };
        entries.insert(name.trim_end_matches('/').to_owned(), entry);
        offset += 512 + size.div_ceil(512) * 512;
    }
    entries
}

/// `key="value" key=value ...` of a LABEL instruction, with `${ARG}` replaced by the ARG's
/// default (what a build without build arguments gets).
fn labels(args: &str, defaults: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = args.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').expect("LABEL key=value");
        let (mut value, after) = match after.strip_prefix('"') {
            Some(quoted) => {
                let end = quoted.find('"').expect("a closing quote");
                (quoted[..end].to_owned(), &quoted[end + 1..])
            }
            None => {
                let (value, after) = after.split_once(' ').unwrap_or((after, ""));
                (value.to_owned(), after)
            }
        };
        for (name, default) in defaults {
            value = value.replace(&format!("${{{name}}}"), default);
        }
        assert!(!value.contains('$'), "LABEL {key}: an ARG without a default in {value}");
        labels.insert(key.to_owned(), value);
        rest = after.trim_start();
    }
    labels
}

/// The arguments of each `keyword` instruction in the Dockerfile's last stage.
fn runtime_stage(keyword: &str) -> Vec<String> {
    let dockerfile = std::fs::read_to_string(Path::new(REPO).join("Dockerfile")).unwrap();
    let instructions = instructions(&dockerfile);
    let last_stage = instructions.last().unwrap().stage;
    instructions
        .into_iter()
        .filter(|i| i.stage == last_stage && i.keyword == keyword)
        .map(|i| i.args)
        .collect()
}

#[test]
fn local_image_is_the_dockerfiles_runtime_stage_around_the_release_binary() {
    let target_dir = target_dir();
    let (binary, _) = release_binary(&target_dir);
    // The same target directory, so the script's own cargo build finds this binary up to date.
    let output = Command::new("bash")
        .arg(Path::new(REPO).join("hack/image.sh"))
        .arg("operator")
        .env("CARGO_TARGET_DIR", &target_dir)
        .stderr(Stdio::inherit())
        .output()
        .expect("bash runs hack/image.sh");
    assert!(
        output.status.success(),
        "hack/image.sh operator failed (its messages are above)"
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (reference, tarball) = stdout
        .trim()
        .strip_prefix("operator=")
        .and_then(|line| line.split_once(' '))
        .unwrap_or_else(|| panic!("not NAME=REFERENCE TARBALL: {stdout:?}"));
    assert_eq!(reference, "winflow.local/winflow:dev");

    let archive = std::fs::read(tarball).unwrap();
    let archive = tar_entries(&archive);
    let member = |name: &str| -> &[u8] {
        archive
            .get(name)
            .unwrap_or_else(|| panic!("{tarball} has no {name}"))
            .data
    };
    let manifest: Value = serde_json::from_slice(member("manifest.json")).unwrap();
    assert_eq!(manifest[0]["RepoTags"], json!([reference]), "{manifest}");
    let image: Value = serde_json::from_slice(member(manifest[0]["Config"].as_str().unwrap())).unwrap();
    let config = &image["config"];

    // What the Dockerfile's runtime stage says, as a build without build arguments gets it.
    let last = |keyword: &str| runtime_stage(keyword).pop();
    let json_form = |keyword: &str| -> Value {
        serde_json::from_str(&last(keyword).unwrap_or_else(|| panic!("no {keyword}"))).unwrap()
    };
    assert_eq!(config["User"], json!(last("USER").unwrap()), "{image}");
    assert_eq!(config["Entrypoint"], json_form("ENTRYPOINT"), "{image}");
    assert_eq!(config["Cmd"], json_form("CMD"), "{image}");
    // distroless's own variables come first; then the Dockerfile's ENV, in its order.
    let mut env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt".to_owned(),
    ];
    for args in runtime_stage("ENV") {
        match args.split_once(' ') {
            Some((key, value)) if !key.contains('=') => env.push(format!("{key}={value}")),
            _ => env.extend(args.split(' ').map(str::to_owned)),
        }
    }
    assert_eq!(config["Env"], json!(env), "{image}");
    let ports: BTreeMap<String, Value> = runtime_stage("EXPOSE")
        .iter()
        .flat_map(|args| args.split(' '))
        .map(|port| {
            let port = if port.contains('/') {
                port.to_owned()
            } else {
                format!("{port}/tcp")
            };
            (port, json!({}))
        })
        .collect();
    assert_eq!(config["ExposedPorts"], json!(ports), "{image}");
    let defaults: BTreeMap<String, String> = runtime_stage("ARG")
        .iter()
        .map(|arg| {
            let (name, default) = arg.split_once('=').unwrap_or((arg, ""));
            (name.to_owned(), default.trim_matches('"').to_owned())
        })
        .collect();
    let expected_labels: BTreeMap<String, String> = runtime_stage("LABEL")
        .iter()
        .flat_map(|args| labels(args, &defaults))
        .collect();
    assert_eq!(config["Labels"], json!(expected_labels), "{image}");
    assert_eq!(config["Labels"]["org.opencontainers.image.version"], "dev");
    let workdir = last("WORKDIR").unwrap_or_else(|| "/home/nonroot".to_owned());
    assert_eq!(
        config["WorkingDir"],
        json!(workdir),
        "distroless nonroot's, unless the Dockerfile sets one"
    );

    // One layer, whose digest the config names.
    let layers = manifest[0]["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    let layer_tar = member(layers[0].as_str().unwrap());
    assert_eq!(
        image["rootfs"]["diff_ids"],
        json!([format!("sha256:{:x}", Sha256::digest(layer_tar))])
    );
    let layer = tar_entries(layer_tar);
    let regular_file = |path: &str| -> &TarEntry<'_> {
        let entry = layer.get(path).unwrap_or_else(|| panic!("the image has no /{path}"));
        assert_eq!(entry.kind, b'0', "/{path} is not a regular file");
        entry
    };

    let winflow = regular_file("winflow");
    assert!(
        winflow.data == std::fs::read(&binary).unwrap().as_slice(),
        "/winflow in {tarball} is not {}",
        binary.display()
    );
    assert_eq!(winflow.mode, 0o755);
    // Every library the dynamic loader needs, at the path ldd resolves it to (the loader too).
    let ldd = Command::new("ldd").arg(&binary).output().expect("ldd runs");
    assert!(ldd.status.success(), "{}", String::from_utf8_lossy(&ldd.stderr));
    let libraries: Vec<String> = String::from_utf8(ldd.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let path = line.rsplit_once("=>").map_or(line, |(_, path)| path);
            path.split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
                .map(str::to_owned)
        })
        .collect();
    assert!(libraries.iter().any(|l| l.contains("libc.so")), "{libraries:?}");
    for library in &libraries {
        let entry = regular_file(library.trim_start_matches('/'));
        assert!(
            entry.data == std::fs::read(library).unwrap().as_slice(),
            "{library} differs from this machine's"
        );
    }

    // The user the config names exists, as distroless's nonroot; /tmp is writable by anyone.
    let user = config["User"].as_str().unwrap();
    let (uid, gid) = user.split_once(':').unwrap();
    let passwd = String::from_utf8_lossy(regular_file("etc/passwd").data).into_owned();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with(&format!("nonroot:x:{uid}:{gid}:"))),
        "{passwd}"
    );
    let group = String::from_utf8_lossy(regular_file("etc/group").data).into_owned();
    assert!(
        group.lines().any(|l| l.starts_with(&format!("nonroot:x:{gid}:"))),
        "{group}"
    );
    let home = &layer["home/nonroot"];
    assert_eq!((home.kind, home.uid), (b'5', uid.parse().unwrap()));
    let tmp = &layer["tmp"];
    assert_eq!((tmp.kind, tmp.mode), (b'5', 0o1777));
    assert!(
        regular_file("etc/ssl/certs/ca-certificates.crt")
            .data
            .starts_with(b"-----BEGIN CERTIFICATE-----")
    );
}
