//! `mlep render` and `mlep crd`: the operator's own pure rendering (`mlep_core::render`)
//! applied to the YAML input, printed as a multi-document YAML stream for GitOps.

use crate::load::{self, LoadError};
use mlep_core::crd::{Model, ModelEndpoint};
use mlep_core::render::{crds, render_all, RenderSettings};
use sha2::{Digest, Sha256};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{0}")]
    Spec(String),
    #[error("YAML output: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("reading the filter module {0}: {1}")]
    Module(String, std::io::Error),
    #[error("--wasm-sha256 {0:?} is not a lowercase hex sha256 (64 digits)")]
    BadSha256(String),
    #[error("no randomness for a route key: {0}")]
    Random(String),
}

/// Which filter module the rendered objects name (by its sha256, like the operator).
pub enum Module {
    File(std::path::PathBuf),
    Sha256(String),
}

impl Module {
    fn sha256(&self) -> Result<String, RenderError> {
        match self {
            Module::File(p) => {
                let bytes = std::fs::read(p)
                    .map_err(|e| RenderError::Module(p.display().to_string(), e))?;
                Ok(Sha256::digest(&bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect())
            }
            Module::Sha256(s) if mlep_core::module::is_sha256_hex(s) => Ok(s.clone()),
            Module::Sha256(s) => Err(RenderError::BadSha256(s.clone())),
        }
    }
}

fn to_stream<T: serde::Serialize>(objects: &[T]) -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(o)?);
    }
    Ok(out)
}

/// The CRDs of `mlep.dev` as YAML.
pub fn crds_yaml() -> Result<String, RenderError> {
    Ok(to_stream(&crds())?)
}

/// Every object the operator would create for the input, as YAML (assuming every variant is
/// ready and no previous allocation, as for a first apply), naming `module` as the operator in
/// `operator_namespace` serves it.
pub fn render_input(
    path: &Path,
    module: &Module,
    operator_namespace: &str,
) -> Result<String, RenderError> {
    let settings = RenderSettings::default().with_module(&module.sha256()?, operator_namespace);
    let input = load::load(path)?;
    let models: Vec<Model> = input
        .models
        .iter()
        .map(|m| {
            let mut r = Model::new(&m.name, m.spec.clone());
            r.metadata.namespace = Some(m.namespace.clone());
            r.metadata.annotations = (!m.annotations.is_empty()).then(|| m.annotations.clone());
            r
        })
        .collect();
    let endpoints: Vec<ModelEndpoint> = input
        .endpoints
        .iter()
        .map(|e| {
            let mut r = ModelEndpoint::new(&e.name, e.spec.clone());
            r.metadata.namespace = Some(e.namespace.clone());
            r.metadata.annotations = (!e.annotations.is_empty()).then(|| e.annotations.clone());
            r
        })
        .collect();
    let mut random_failed = None;
    let mut fresh_key = || {
        crate::plan::fresh_route_key().unwrap_or_else(|e| {
            random_failed = Some(e);
            String::new()
        })
    };
    let objects = render_all(&models, &endpoints, &settings, &mut fresh_key)
        .map_err(|e| RenderError::Spec(e.to_string()))?;
    if let Some(e) = random_failed {
        return Err(RenderError::Random(e.to_string()));
    }
    Ok(to_stream(&objects)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/titanic")
    }

    #[test]
    fn render_prints_the_operators_objects_for_the_example() {
        let out =
            render_input(&example(), &Module::Sha256("ab".repeat(32)), "mlep-system").unwrap();
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&out)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
        for k in ["Deployment", "Service", "DestinationRule", "VirtualService"] {
            assert!(kinds.contains(&k), "{k} missing in {kinds:?}");
        }
        // Same code as the operator: exactly what render_all returns.
        assert_eq!(docs.len(), out.matches("---\n").count());
        assert!(out.contains("x-mlep-variant"));
    }

    #[test]
    fn render_names_the_real_module_by_its_sha256_on_the_operators_port() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("m.wasm");
        std::fs::write(&wasm, b"abc").unwrap();
        let out = render_input(&example(), &Module::File(wasm), "ops").unwrap();
        // sha256("abc"), FIPS 180-2 test vector.
        let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert!(
            out.contains(&format!(
                "http://mlep-operator.ops.svc.cluster.local:8081/mlep_filter/{sha}.wasm"
            )),
            "{out}"
        );
        assert!(!out.contains(&"0".repeat(64)));
        let err = render_input(&example(), &Module::Sha256("XYZ".into()), "ops").unwrap_err();
        assert!(err.to_string().contains("--wasm-sha256"), "{err}");
    }

    #[test]
    fn crd_prints_both_definitions() {
        let out = crds_yaml().unwrap();
        assert!(
            out.contains("name: models.mlep.dev") && out.contains("name: modelendpoints.mlep.dev"),
            "{out}"
        );
    }
}
