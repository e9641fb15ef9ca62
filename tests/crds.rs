//! `crds/` must hold exactly what `winflow crds` prints.

use std::path::Path;

#[test]
fn crds_directory_matches_the_generated_crds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for crd in winflow::crdgen::winflow_crds() {
        let file = winflow::crdgen::crd_file_name(&crd);
        let committed = std::fs::read_to_string(dir.join(&file)).unwrap_or_else(|e| panic!("crds/{file}: {e}"));
        assert!(
            committed == winflow::crdgen::crd_yaml(&crd),
            "crds/{file} is out of date with the Rust types; run: cargo run -- crds --dir crds"
        );
    }
}

#[test]
fn crds_directory_holds_nothing_else_but_the_upstream_gmsa_crd() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut expected: Vec<String> = winflow::crdgen::winflow_crds()
        .iter()
        .map(winflow::crdgen::crd_file_name)
        .collect();
    expected.push("gmsacredentialspecs.windows.k8s.io.yaml".to_owned());
    expected.sort();
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, expected);
}
