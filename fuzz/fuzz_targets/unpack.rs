//! model-init's unpacker on arbitrary archives (tar, tar.gz, zip or a single file): it either
//! refuses the archive or writes only inside the target directory, within the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlep_model_init::unpack::{unpack, UnpackLimits};
use std::path::Path;

const LIMITS: UnpackLimits = UnpackLimits {
    max_unpacked_bytes: 1 << 20,
    max_entries: 64,
};

/// Every path under `dir` (not following symlinks), with the total size of regular files.
fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>, bytes: &mut u64) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.is_dir() {
            walk(&p, out, bytes);
        } else if m.is_file() {
            *bytes += m.len();
        }
        out.push(p);
    }
}

fuzz_target!(|archive: &[u8]| {
    let tmp = tempfile::tempdir().expect("temp dir");
    let src = tmp.path().join("artifact");
    let root = tmp.path().join("model");
    std::fs::write(&src, archive).expect("write archive");
    std::fs::create_dir(&root).expect("create root");
    let result = unpack(&src, &root, "model.bin", LIMITS);
    // Nothing next to the root but the archive itself.
    let mut outside = vec![];
    let mut ignored = 0;
    walk(tmp.path(), &mut outside, &mut ignored);
    let (mut inside, mut bytes) = (vec![], 0);
    walk(&root, &mut inside, &mut bytes);
    let stray: Vec<_> = outside
        .iter()
        .filter(|p| **p != src && **p != root && !p.starts_with(&root))
        .collect();
    assert!(stray.is_empty(), "written outside the root: {stray:?}");
    if let Ok(written) = result {
        assert!(written <= LIMITS.max_unpacked_bytes && bytes <= LIMITS.max_unpacked_bytes);
        for p in &inside {
            let m = std::fs::symlink_metadata(p).expect("listed");
            if m.file_type().is_symlink() {
                let target = std::fs::canonicalize(p);
                let root = std::fs::canonicalize(&root).expect("root");
                assert!(
                    target.map_or(true, |t| t.starts_with(&root)),
                    "symlink {p:?} leaves the root"
                );
            }
        }
    }
});
