//! `crds/` must hold exactly what `winflow crds` prints.

#[test]
fn crds_directory_matches_the_generated_crds() {
    let generated = winflow::crdgen::winflow_crds_yaml();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/windowstaskidentities.winflow.io.yaml"
    );
    let committed =
        std::fs::read_to_string(path).expect("crds/windowstaskidentities.winflow.io.yaml exists");
    assert!(
        committed == generated,
        "crds/ is out of date with the Rust types; run: cargo run -- crds > crds/windowstaskidentities.winflow.io.yaml"
    );
}
