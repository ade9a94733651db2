//! The contract's enums in the Kubernetes API. The filter's JSON spells enum values in
//! camelCase (`"mode": "json"`), the Kubernetes API convention is PascalCase (`compare: Json`).
//! Rather than declaring a second enum for the CRD, the CRD fields hold the contract's own
//! types through this adapter: the API spelling is the contract's with its first letter upper
//! case, and the set of values is the contract's `ALL`. So a value added to the contract shows
//! up in the CRD schema, the API and the filter config at once.
//!
//! Use on an `Option<E>` field: `#[serde(default, skip_serializing_if = "Option::is_none",
//! with = "crate::api_enum")]` and `#[schemars(schema_with = "crate::api_enum::schema::<E>")]`.

use mlep_contract::{CompareMode, UnknownTarget};
use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A contract enum with unit variants that serialize as strings.
pub trait ApiEnum: Copy + Serialize + DeserializeOwned + 'static {
    /// Every value, in the order the CRD schema lists them.
    const ALL: &'static [Self];
}

impl ApiEnum for CompareMode {
    const ALL: &'static [Self] = &CompareMode::ALL;
}

impl ApiEnum for UnknownTarget {
    const ALL: &'static [Self] = &UnknownTarget::ALL;
}

/// The API spelling of `value`: its contract (serde) spelling with the first letter upper case.
pub fn api_name<E: ApiEnum>(value: E) -> Option<String> {
    let contract = serde_json::to_value(value).ok()?;
    let mut chars = contract.as_str()?.chars();
    let first = chars.next()?;
    Some(first.to_uppercase().chain(chars).collect())
}

/// Every API spelling of `E`, in schema order.
pub fn api_names<E: ApiEnum>() -> Vec<String> {
    E::ALL.iter().filter_map(|v| api_name(*v)).collect()
}

pub fn serialize<E: ApiEnum, S: Serializer>(value: &Option<E>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        None => s.serialize_none(),
        Some(v) => {
            let name = api_name(*v).ok_or_else(|| S::Error::custom("enum without a name"))?;
            s.serialize_some(&name)
        }
    }
}

pub fn deserialize<'de, E: ApiEnum, D: Deserializer<'de>>(d: D) -> Result<Option<E>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    E::ALL
        .iter()
        .find(|v| api_name(**v).as_deref() == Some(text.as_str()))
        .map(|v| Some(*v))
        .ok_or_else(|| {
            let expected: Vec<String> = api_names::<E>().iter().map(|n| format!("`{n}`")).collect();
            D::Error::custom(format!(
                "unknown variant `{text}`, expected one of {}",
                expected.join(", ")
            ))
        })
}

/// JSON schema of an optional `E` field: a nullable string, one of the API spellings. (The same
/// shape schemars gives a PascalCase enum; `render::crds` drops the `null` from `enum`.)
pub fn schema<E: ApiEnum>(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut values: Vec<serde_json::Value> = api_names::<E>().into_iter().map(Into::into).collect();
    values.push(serde_json::Value::Null);
    schemars::json_schema!({ "type": ["string", "null"], "enum": values })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Field {
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "crate::api_enum"
        )]
        mode: Option<CompareMode>,
    }

    #[test]
    fn the_api_spelling_is_the_contract_spelling_capitalised() {
        assert_eq!(api_names::<CompareMode>(), ["Off", "Exact", "Json"]);
        assert_eq!(api_names::<UnknownTarget>(), ["Reject", "Ignore"]);
        let json = serde_json::to_string(&Field {
            mode: Some(CompareMode::Json),
        })
        .unwrap();
        assert_eq!(json, r#"{"mode":"Json"}"#);
        let back: Field = serde_json::from_str(&json).unwrap();
        assert_eq!(back.mode, Some(CompareMode::Json));
        let none: Field = serde_json::from_str("{}").unwrap();
        assert_eq!(none.mode, None);
    }

    #[test]
    fn an_unknown_or_contract_spelled_value_names_the_accepted_ones() {
        for bad in ["json", "Fuzzy"] {
            let err = serde_json::from_str::<Field>(&format!(r#"{{"mode":"{bad}"}}"#))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!(
                    "unknown variant `{bad}`, expected one of `Off`, `Exact`, `Json`"
                )),
                "{err}"
            );
        }
    }
}
