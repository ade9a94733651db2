//! Schemas the derive cannot express.

/// An object the API server stores as written (`x-kubernetes-preserve-unknown-fields`): the
/// operator's own copy of an already validated spec needs no second schema.
pub fn opaque_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
