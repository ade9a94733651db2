//! `metadata.json` of a model artifact: what the model is called, which features it takes in
//! which order and with which types, and how to turn its output into a prediction.
//!
//! ```json
//! {"name": "titanic", "version": "v1", "format": "onnx", "model": "model.onnx",
//!  "input": "input", "output": "probability",
//!  "features": [{"name": "pclass", "type": "integer"},
//!               {"name": "sex", "type": "category", "values": ["male", "female"]},
//!               {"name": "age", "type": "number"}],
//!  "prediction": {"label": "survived", "probability": "probability", "threshold": 0.5, "labels": [0, 1]}}
//! ```
//! The model takes one float32 tensor `[N, features.len()]`: numbers as they are, categories as
//! the index of the value in `values`. It returns `[N, 1]` (or `[N]`): the probability of the
//! positive class (`labels[1]`).

use serde::Deserialize;

use crate::ServerError;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureType {
    /// A JSON integer (an integral float such as `3.0` is accepted too).
    Integer,
    /// Any JSON number.
    Number,
    /// One of `values`, as a string; encoded as its index.
    Category,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Feature {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FeatureType,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Prediction {
    /// Field name of the predicted label in responses (e.g. `survived`).
    pub label: String,
    /// Field name of the probability in responses (e.g. `probability`).
    #[serde(default = "default_probability")]
    pub probability: String,
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    /// `[negative, positive]` labels; any JSON values.
    #[serde(default = "default_labels")]
    pub labels: Vec<serde_json::Value>,
}

fn default_probability() -> String {
    "probability".into()
}
fn default_threshold() -> f32 {
    0.5
}
fn default_labels() -> Vec<serde_json::Value> {
    vec![0.into(), 1.into()]
}
fn default_model_file() -> String {
    "model.onnx".into()
}
fn default_format() -> String {
    "onnx".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    pub name: String,
    pub version: String,
    #[serde(default = "default_format")]
    pub format: String,
    /// Model file, relative to the model directory.
    #[serde(default = "default_model_file")]
    pub model: String,
    pub features: Vec<Feature>,
    pub prediction: Prediction,
}

impl Metadata {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ServerError> {
        let m: Metadata =
            serde_json::from_slice(bytes).map_err(|e| ServerError::Metadata(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// `name:version`, sent as the `x-mlep-model` response header.
    pub fn id(&self) -> String {
        format!("{}:{}", self.name, self.version)
    }

    fn validate(&self) -> Result<(), ServerError> {
        let bad = |m: String| Err(ServerError::Metadata(m));
        if self.format != "onnx" {
            return bad(format!(
                "format {:?} is not supported (only \"onnx\")",
                self.format
            ));
        }
        if self.features.is_empty() {
            return bad("features: at least one feature is required".into());
        }
        if self.model.contains("..") || self.model.starts_with('/') {
            return bad(format!(
                "model: {:?} must be a relative path inside the model directory",
                self.model
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, f) in self.features.iter().enumerate() {
            if f.name.is_empty() || !seen.insert(f.name.as_str()) {
                return bad(format!(
                    "features[{i}].name: empty or duplicate name {:?}",
                    f.name
                ));
            }
            if (f.kind == FeatureType::Category) == f.values.is_empty() {
                return bad(format!(
                    "features[{i}] ({}): `values` is required for categories and only for them",
                    f.name
                ));
            }
        }
        if self.prediction.labels.len() != 2 {
            return bad(
                "prediction.labels: exactly two labels (negative, positive) are required".into(),
            );
        }
        if !(0.0..=1.0).contains(&self.prediction.threshold) {
            return bad("prediction.threshold: must be within [0, 1]".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_titanic_metadata_parses_with_defaults() {
        let m = Metadata::from_json(
            br#"{"name":"titanic","version":"v1","features":[{"name":"sex","type":"category","values":["male","female"]}],
                "prediction":{"label":"survived"}}"#,
        )
        .unwrap();
        assert_eq!(m.id(), "titanic:v1");
        assert_eq!(m.model, "model.onnx");
        assert_eq!(m.prediction.threshold, 0.5);
    }

    #[test]
    fn invalid_metadata_names_the_field() {
        let err = Metadata::from_json(br#"{"name":"t","version":"v","features":[{"name":"sex","type":"category"}],"prediction":{"label":"y"}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("features[0]"), "{err}");
        let err = Metadata::from_json(
            br#"{"name":"t","version":"v","features":[],"prediction":{"label":"y"}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("features"), "{err}");
    }
}
