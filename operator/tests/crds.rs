//! The CRD YAML in `manifests/crds/` is generated from the Rust types (`mlep-operator crd`);
//! this fails on any difference, so a type change without regenerating cannot merge.

// Test helpers may unwrap: a failed unwrap is a failed test (clippy.toml allows it in #[test]s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn manifests_crds_match_the_rust_types() {
    let dir = std::env::temp_dir().join(format!("mlep-crds-{}", std::process::id()));
    let written = mlep_operator::app::write_crds(dir.to_str().unwrap()).unwrap();
    assert_eq!(written.len(), 2);
    for path in written {
        let file = std::path::Path::new(&path)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let committed = std::fs::read_to_string(format!(
            "{}/../manifests/crds/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap_or_else(|e| {
            panic!("manifests/crds/{file}: {e}; run `cargo run -p mlep-operator -- crd`")
        });
        let generated = std::fs::read_to_string(&path).unwrap();
        assert!(
            committed == generated,
            "manifests/crds/{file} is out of date; run `cargo run -p mlep-operator -- crd`"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
