//! The fast path for JSON bodies that carry rows: `[row, ...]` and `{"instances": [row, ...]}`,
//! each row a record (`{"pclass": 3, ...}`) or a positional array. Cells go straight into the
//! batch as they are parsed, without a `serde_json::Value` tree in between: building, walking
//! and dropping that tree was a fifth to a third of the server's CPU on a 256-row request
//! (docs/model-server.md, "Against onnxruntime").
//!
//! It accepts exactly what `codec`'s tree decoder accepts for these shapes and yields the same
//! batch; anything else (columns, a single record, a key before `"instances"`) and every
//! invalid input gives `None`, and the caller decodes again with the tree decoder, which
//! handles every shape and words the errors. A bad request is parsed twice; a good one once.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::codec::Batch;
use crate::metadata::{Feature, FeatureType};

/// The rows of `body`, or `None` if the body is not (valid) rows: decode with the tree then.
pub fn decode(body: &[u8], features: &[Feature]) -> Option<Batch> {
    let mut state = State {
        features,
        data: Vec::new(),
        seen: vec![false; features.len()],
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let rows = Top(&mut state).deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(Batch {
        rows,
        data: state.data,
    })
}

struct State<'a> {
    features: &'a [Feature],
    data: Vec<f32>,
    /// Per record: which features it has set.
    seen: Vec<bool>,
}

/// Any error: the tree decoder will say what it is.
fn reject<E: de::Error>() -> E {
    E::custom("not a valid row batch")
}

/// The top level: an array of rows, or an object whose first key is `instances`.
struct Top<'s, 'a>(&'s mut State<'a>);

impl<'de> DeserializeSeed<'de> for Top<'_, '_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top<'_, '_> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("rows")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<usize, A::Error> {
        rows(self.0, seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        match map.next_key::<&str>()? {
            Some("instances") => {}
            _ => return Err(reject()),
        }
        let n = map.next_value_seed(Rows(self.0))?;
        // Later keys are ignored, as by the tree decoder; a second "instances" is not.
        while let Some(key) = map.next_key::<&str>()? {
            if key == "instances" {
                return Err(reject());
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(n)
    }
}

struct Rows<'s, 'a>(&'s mut State<'a>);

impl<'de> DeserializeSeed<'de> for Rows<'_, '_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Rows<'_, '_> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of rows")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<usize, A::Error> {
        rows(self.0, seq)
    }
}

fn rows<'de, A: SeqAccess<'de>>(state: &mut State, mut seq: A) -> Result<usize, A::Error> {
    if let Some(hint) = seq.size_hint() {
        state
            .data
            .reserve(hint.saturating_mul(state.features.len()));
    }
    let mut n = 0;
    while seq.next_element_seed(Row(state))?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// One row: a record or a positional array, appended to `data`.
struct Row<'s, 'a>(&'s mut State<'a>);

impl<'de> DeserializeSeed<'de> for Row<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Row<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a record or a positional row")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let s = self.0;
        for f in s.features {
            let v = seq.next_element_seed(Cell(f))?.ok_or_else(reject)?;
            s.data.push(v);
        }
        match seq.next_element::<IgnoredAny>()? {
            Some(_) => Err(reject()),
            None => Ok(()),
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let s = self.0;
        let base = s.data.len();
        s.data.resize(base + s.features.len(), 0.0);
        s.seen.fill(false);
        let mut position = 0;
        while let Some(index) = map.next_key_seed(Key {
            features: s.features,
            position,
        })? {
            position += 1;
            match index {
                // A repeated key: the last value counts, as in the tree decoder.
                Some(i) => {
                    s.data[base + i] = map.next_value_seed(Cell(&s.features[i]))?;
                    s.seen[i] = true;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if s.seen.iter().all(|&b| b) {
            Ok(())
        } else {
            Err(reject())
        }
    }
}

/// A record's key: the index of the feature it names (`None`: not a feature, ignored). Keys
/// usually come in metadata order, so the feature at the key's position is tried first.
struct Key<'a> {
    features: &'a [Feature],
    position: usize,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a feature name")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        if self
            .features
            .get(self.position)
            .is_some_and(|f| f.name == key)
        {
            return Ok(Some(self.position));
        }
        Ok(self.features.iter().position(|f| f.name == key))
    }
}

/// One cell, encoded as `codec` encodes it: numbers as they are (integers must be integral),
/// categories as the index of the value.
struct Cell<'a>(&'a Feature);

impl<'de> DeserializeSeed<'de> for Cell<'_> {
    type Value = f32;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<f32, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Cell<'_> {
    type Value = f32;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a value for {:?}", self.0.name)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f32, E> {
        self.visit_f64(v as f64)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f32, E> {
        self.visit_f64(v as f64)
    }
    fn visit_f64<E: de::Error>(self, x: f64) -> Result<f32, E> {
        match self.0.kind {
            FeatureType::Integer if x.fract() == 0.0 && x.is_finite() => Ok(x as f32),
            FeatureType::Number => Ok(x as f32),
            _ => Err(reject()),
        }
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<f32, E> {
        match self.0.kind {
            FeatureType::Category => self
                .0
                .values
                .iter()
                .position(|v| v == s)
                .map(|i| i as f32)
                .ok_or_else(reject),
            _ => Err(reject()),
        }
    }
}
