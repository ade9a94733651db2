//! The allocation of each endpoint, kept in the state directory so that stickiness survives
//! restarts of `mlep`.

use super::{io_err, LocalError};
use crate::plan::Desired;
use mlep_contract::Allocation;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The persisted state of one endpoint (`<state-dir>/endpoints/<namespace>/<name>.json`).
#[derive(serde::Serialize, serde::Deserialize)]
struct EndpointState {
    allocation: Allocation,
}

fn state_path(state_dir: &Path, key: &str) -> PathBuf {
    state_dir.join("endpoints").join(format!("{key}.json"))
}

/// The previous allocations of these endpoints (`namespace/name`), from the state directory.
/// Unreadable or invalid state is ignored (a fresh layout is used).
pub(super) fn load_allocations(state_dir: &Path, d: &Desired) -> BTreeMap<String, Allocation> {
    let mut out = BTreeMap::new();
    for e in &d.endpoints {
        let key = format!("{}/{}", e.namespace(), e.name());
        if let Ok(text) = std::fs::read_to_string(state_path(state_dir, &key)) {
            if let Ok(s) = serde_json::from_str::<EndpointState>(&text) {
                out.insert(key, s.allocation);
            }
        }
    }
    out
}

pub(super) fn save_allocation(
    state_dir: &Path,
    key: &str,
    allocation: &Allocation,
) -> Result<(), LocalError> {
    let path = state_path(state_dir, key);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
    }
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(&EndpointState {
        allocation: allocation.clone(),
    })
    .map_err(|source| LocalError::Json {
        what: "the endpoint state",
        source,
    })?;
    std::fs::write(&tmp, body).map_err(io_err(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io_err(format!("rename {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{parse_into, validate, Input};
    use crate::plan::{self, TEST_ROUTE_KEY};

    #[test]
    fn allocations_persist_in_the_state_dir_so_stickiness_survives_restarts() {
        let dir = std::env::temp_dir().join(format!("mlep-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut input = Input::default();
        let models = "apiVersion: mlep.dev/v1alpha1\nkind: Model\nmetadata: {name: m, namespace: ns}\nspec: {image: x/mlep-model-server:1}\n";
        let ep = |a: u32| {
            format!("apiVersion: mlep.dev/v1alpha1\nkind: ModelEndpoint\nmetadata: {{name: ep, namespace: ns}}\nspec:\n  hosts: [h.example.com]\n  variants:\n    - {{name: a, model: m, weight: {a}}}\n    - {{name: b, model: m, weight: {}}}\n", 100 - a)
        };
        parse_into(&mut input, Path::new("m.yaml"), models).unwrap();
        parse_into(&mut input, Path::new("e.yaml"), &ep(80)).unwrap();
        validate(&input).unwrap();
        let d = plan::desired(&input).unwrap();
        assert!(
            load_allocations(&dir, &d).is_empty(),
            "a fresh state dir has nothing"
        );
        // 80/20 -> 50/50, persisted.
        let first = plan::filter_config(&d, &BTreeMap::new(), TEST_ROUTE_KEY).unwrap();
        let mut input2 = Input::default();
        parse_into(&mut input2, Path::new("m.yaml"), models).unwrap();
        parse_into(&mut input2, Path::new("e.yaml"), &ep(50)).unwrap();
        let d2 = plan::desired(&input2).unwrap();
        let prev: BTreeMap<String, Allocation> =
            [("ns/ep".to_owned(), first.endpoints[0].allocation.clone())].into();
        let second = plan::filter_config(&d2, &prev, TEST_ROUTE_KEY).unwrap();
        // ... -> 70/30: b gives back its highest buckets, so a owns two runs.
        let mut input3 = Input::default();
        parse_into(&mut input3, Path::new("m.yaml"), models).unwrap();
        parse_into(&mut input3, Path::new("e.yaml"), &ep(70)).unwrap();
        let d3 = plan::desired(&input3).unwrap();
        let prev: BTreeMap<String, Allocation> =
            [("ns/ep".to_owned(), second.endpoints[0].allocation.clone())].into();
        let third = plan::filter_config(&d3, &prev, TEST_ROUTE_KEY).unwrap();
        save_allocation(&dir, "ns/ep", &third.endpoints[0].allocation).unwrap();
        // A restart with the 70/30 input reads it back: the carried allocation, not a fresh
        // 70/30 layout (which would move users who never had to move).
        let loaded = load_allocations(&dir, &d3);
        assert_eq!(loaded["ns/ep"], third.endpoints[0].allocation);
        assert_ne!(
            loaded["ns/ep"],
            Allocation::initial(&[("a", 70), ("b", 30)]).unwrap()
        );
        let again = plan::filter_config(&d3, &loaded, TEST_ROUTE_KEY).unwrap();
        assert_eq!(again.endpoints[0].allocation, third.endpoints[0].allocation);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
