//! The model server's request decoding (JSON and CSV) against a fixed three-feature model:
//! any body decodes to `rows * 3` floats with at least one row, or is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlep_fuzz::codec::{decode, request_format, response_format};
use mlep_fuzz::metadata::Metadata;
use std::sync::OnceLock;

const METADATA: &[u8] = br#"{"name": "titanic", "version": "v1",
  "features": [{"name": "pclass", "type": "integer"},
               {"name": "sex", "type": "category", "values": ["male", "female"]},
               {"name": "age", "type": "number"}],
  "prediction": {"label": "survived"}}"#;

fuzz_target!(|input: (u8, &str, &[u8])| {
    static META: OnceLock<Metadata> = OnceLock::new();
    let meta = META.get_or_init(|| Metadata::from_json(METADATA).expect("valid metadata"));
    let (pick, header, body) = input;
    let _ = response_format(Some(header));
    let content_type = match pick % 3 {
        0 => Some("application/json"),
        1 => Some("text/csv"),
        _ => Some(header),
    };
    let Ok(format) = request_format(content_type) else {
        return;
    };
    if let Ok(batch) = decode(format, body, meta) {
        assert!(batch.rows > 0);
        assert_eq!(batch.data.len(), batch.rows * meta.features.len());
    }
});
