//! The loaded model: metadata plus an optimized tract plan.
//!
//! tract-onnx is pure Rust (no onnxruntime, no C++). It covers the standard ONNX operators;
//! ONNX-ML operators (ZipMap, LinearClassifier, TreeEnsembleClassifier as skl2onnx emits them)
//! are only partly supported, which is why the example models are exported as plain
//! Sub/Div/MatMul/Add/Relu/Sigmoid graphs (see examples/titanic/train.py).

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::metadata::Metadata;
use crate::ServerError;

type Plan = SimplePlan<TypedFact, Box<dyn TypedOp>, Graph<TypedFact, Box<dyn TypedOp>>>;

pub struct Model {
    pub meta: Metadata,
    plan: Plan,
    features: usize,
}

impl Model {
    /// Load `metadata.json` and the ONNX file it names from `dir`, with a symbolic batch size.
    pub fn load(dir: &Path) -> Result<Arc<Self>, ServerError> {
        let meta_path = dir.join("metadata.json");
        let bytes = std::fs::read(&meta_path)
            .map_err(|e| ServerError::Metadata(format!("{}: {e}", meta_path.display())))?;
        let meta = Metadata::from_json(&bytes)?;
        let model_path = dir.join(&meta.model);
        let features = meta.features.len();
        let load = || -> TractResult<Plan> {
            let mut model = tract_onnx::onnx().model_for_path(&model_path)?;
            let batch = model.symbols.sym("N");
            model.set_input_fact(0, f32::fact([batch.to_dim(), features.to_dim()]).into())?;
            model.into_optimized()?.into_runnable()
        };
        let plan =
            load().map_err(|e| ServerError::Model(format!("{}: {e:#}", model_path.display())))?;
        let m = Model {
            meta,
            plan,
            features,
        };
        // A dry run catches models whose output shape does not fit the contract at load time.
        m.predict(&vec![0.0; features], 1)
            .map_err(|e| ServerError::Model(format!("test inference failed: {e}")))?;
        Ok(Arc::new(m))
    }

    /// Probabilities of the positive class for `rows` rows of `data` (row-major).
    pub fn predict(&self, data: &[f32], rows: usize) -> Result<Vec<f32>, ServerError> {
        let input = tract_ndarray::Array2::from_shape_vec((rows, self.features), data.to_vec())
            .map_err(|e| ServerError::Inference(e.to_string()))?;
        let out = self
            .plan
            .run(tvec!(Tensor::from(input).into()))
            .map_err(|e| ServerError::Inference(format!("{e:#}")))?;
        let first = out
            .first()
            .ok_or_else(|| ServerError::Inference("model has no output".into()))?;
        let view = first
            .to_array_view::<f32>()
            .map_err(|e| ServerError::Inference(format!("output is not float32: {e}")))?;
        let shape = view.shape().to_vec();
        let per_row = match shape.as_slice() {
            [n] if *n == rows => 1,
            [n, 1] if *n == rows => 1,
            _ => {
                return Err(ServerError::Inference(format!(
                    "output shape {shape:?}, expected [{rows}, 1]"
                )))
            }
        };
        Ok(view.iter().step_by(per_row).copied().collect())
    }
}
