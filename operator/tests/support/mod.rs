//! Shared by the integration tests and the benchmark: the CRDs to install into the test API
//! server (ours and Istio's), with `x-kubernetes-validations` stripped because Kubernetes 1.20
//! knows no CEL (server-side apply of a CRD carrying it fails "field not declared in schema").

use serde_json::Value;

fn strip_cel(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("x-kubernetes-validations");
            m.values_mut().for_each(strip_cel);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_cel),
        _ => {}
    }
}

/// Our CRDs and Istio's (`../shared/istio/crd-all.gen.yaml`), CEL stripped, ready for
/// server-side apply.
pub fn test_crds() -> Vec<Value> {
    let mut crds: Vec<Value> = mlep_operator::render::crds()
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    let path = format!(
        "{}/../../shared/istio/crd-all.gen.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let istio = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    for doc in serde_yaml::Deserializer::from_str(&istio) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] == "CustomResourceDefinition" {
            crds.push(v);
        }
    }
    crds.iter_mut().for_each(strip_cel);
    crds
}
