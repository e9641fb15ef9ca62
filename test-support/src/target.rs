//! Where cargo put the test or benchmark being run: the `env!` values cargo gives a test crate
//! (`CARGO_BIN_EXE_winflow`, `CARGO_TARGET_TMPDIR`) are not given to this library, so they
//! are found next to the running executable, `<target>/<profile>/deps/<name>-<hash>`.

use std::path::PathBuf;

/// `<target>/<profile>`: the test binaries' `deps/` is in it, and the `winflow` binary that
/// cargo builds for them.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running test");
    exe.parent()
        .and_then(|deps| deps.parent())
        .unwrap_or_else(|| panic!("{} is not in <target>/<profile>/deps", exe.display()))
        .to_path_buf()
}

/// The `winflow` binary of this build (what `CARGO_BIN_EXE_winflow` names in a test crate).
pub fn winflow_binary() -> PathBuf {
    let binary = profile_dir().join("winflow");
    assert!(
        binary.exists(),
        "{} does not exist: run the tests with cargo test, which builds it",
        binary.display()
    );
    binary
}

/// The target directory (what `CARGO_TARGET_TMPDIR`'s parent is).
pub fn target_dir() -> PathBuf {
    profile_dir()
        .parent()
        .expect("the profile directory is in the target directory")
        .to_path_buf()
}

/// Scratch space for tests in the target directory (what `CARGO_TARGET_TMPDIR` names).
pub fn tmp_dir() -> PathBuf {
    let dir = target_dir().join("tmp");
    std::fs::create_dir_all(&dir).expect("the target directory's tmp/");
    dir
}
