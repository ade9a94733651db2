//! `mlep render` and `mlep crd`: the operator's own pure rendering (`mlep_core::render`)
//! applied to the YAML input, printed as a multi-document YAML stream for GitOps.

use crate::load::{self, LoadError};
use mlep_core::crd::{Model, ModelEndpoint};
use mlep_core::render::{crds, render_all, RenderSettings};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{0}")]
    Spec(String),
    #[error("YAML output: {0}")]
    Yaml(#[from] serde_yaml::Error),
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
/// ready and no previous allocation, as for a first apply).
pub fn render_input(path: &Path) -> Result<String, RenderError> {
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
    let objects = render_all(&models, &endpoints, &RenderSettings::default())
        .map_err(|e| RenderError::Spec(e.to_string()))?;
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
        let out = render_input(&example()).unwrap();
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
    fn crd_prints_both_definitions() {
        let out = crds_yaml().unwrap();
        assert!(
            out.contains("name: models.mlep.dev") && out.contains("name: modelendpoints.mlep.dev"),
            "{out}"
        );
    }
}
