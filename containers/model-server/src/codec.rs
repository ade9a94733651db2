//! Request decoding and response encoding (pure: bytes in, values out).
//!
//! Requests (`Content-Type`):
//! - `application/json`:
//!   - records: `[{"pclass": 3, "sex": "male", ...}, ...]` (a single record object is accepted too),
//!   - `{"instances": [...]}` with records or positional arrays (metadata feature order),
//!   - columns: `{"pclass": [3, 1], "sex": ["male", "female"], ...}`,
//!   - positional rows: `[[3, "male", 22.0, 7.25], ...]`.
//!
//!   Fields not named in the metadata are ignored; a missing or `null` feature is an error.
//! - `text/csv`: one row per line, comma-separated, RFC 4180 quoting. The header is optional
//!   (SageMaker built-in algorithms send none): if the first line contains every feature name
//!   it is a header and columns are matched by name (extra columns ignored); otherwise every
//!   line is positional, in metadata feature order, with exactly one cell per feature.
//!
//! Responses (`Accept`): `application/json` (default, also for `*/*`):
//! `{"predictions": [{"survived": 1, "probability": 0.83}, ...]}`; `text/csv`: one
//! `label,probability` line per input row, no header.

use serde_json::{Map, Value};

use crate::metadata::{Feature, FeatureType, Metadata};

/// A request problem, answered with `status` and `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl RequestError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let v = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

/// Request body format from `Content-Type` (parameters such as `charset` are ignored).
pub fn request_format(content_type: Option<&str>) -> Result<Format, RequestError> {
    let media = content_type.map(|c| {
        c.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    match media.as_deref() {
        Some("application/json") => Ok(Format::Json),
        Some("text/csv") => Ok(Format::Csv),
        Some(other) => Err(RequestError::new(
            415,
            "unsupported_media_type",
            format!("content type {other:?} is not supported; use application/json or text/csv"),
        )),
        None => Err(RequestError::new(
            415,
            "unsupported_media_type",
            "missing Content-Type; use application/json or text/csv",
        )),
    }
}

/// Response format from `Accept`: the first listed type we can produce.
pub fn response_format(accept: Option<&str>) -> Result<Format, RequestError> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Format::Json);
    };
    for part in accept.split(',') {
        match part
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "application/json" | "application/*" | "*/*" => return Ok(Format::Json),
            "text/csv" | "text/*" => return Ok(Format::Csv),
            _ => {}
        }
    }
    Err(RequestError::new(
        406,
        "not_acceptable",
        format!("cannot produce {accept:?}; accept application/json or text/csv"),
    ))
}

/// Rows encoded as the model input: `rows * features` floats, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub rows: usize,
    pub data: Vec<f32>,
}

pub fn decode(format: Format, body: &[u8], meta: &Metadata) -> Result<Batch, RequestError> {
    let batch = match format {
        Format::Json => decode_json(body, meta)?,
        Format::Csv => decode_csv(body, meta)?,
    };
    if batch.rows == 0 {
        return Err(RequestError::bad("empty", "the request holds no rows"));
    }
    Ok(batch)
}

fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!(
            "{}...",
            &s[..s.char_indices().nth(40).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        s
    }
}

fn encode_json(f: &Feature, v: &Value, row: usize) -> Result<f32, RequestError> {
    let wrong = |expected: &str| {
        RequestError::bad(
            "wrong_type",
            format!(
                "row {row}, field {:?}: expected {expected}, got {}",
                f.name,
                describe(v)
            ),
        )
    };
    match (&f.kind, v) {
        (_, Value::Null) => Err(RequestError::bad(
            "missing_field",
            format!("row {row}: field {:?} is null", f.name),
        )),
        (FeatureType::Integer, Value::Number(n)) => match n.as_f64() {
            Some(x) if x.fract() == 0.0 && x.is_finite() => Ok(x as f32),
            _ => Err(wrong("an integer")),
        },
        (FeatureType::Integer, _) => Err(wrong("an integer")),
        (FeatureType::Number, Value::Number(n)) => n
            .as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| wrong("a number")),
        (FeatureType::Number, _) => Err(wrong("a number")),
        (FeatureType::Category, Value::String(s)) => category(f, s, row),
        (FeatureType::Category, _) => Err(wrong(&format!("one of {:?}", f.values))),
    }
}

fn category(f: &Feature, s: &str, row: usize) -> Result<f32, RequestError> {
    f.values
        .iter()
        .position(|v| v == s)
        .map(|i| i as f32)
        .ok_or_else(|| {
            RequestError::bad(
                "unknown_category",
                format!(
                    "row {row}, field {:?}: {s:?} is not one of {:?}",
                    f.name, f.values
                ),
            )
        })
}

/// Rows (records or positional) take the streaming path; other shapes, and every error, the
/// `Value` tree (see `json_rows`).
fn decode_json(body: &[u8], meta: &Metadata) -> Result<Batch, RequestError> {
    match crate::json_rows::decode(body, &meta.features) {
        Some(batch) => Ok(batch),
        None => decode_json_tree(body, meta),
    }
}

fn decode_json_tree(body: &[u8], meta: &Metadata) -> Result<Batch, RequestError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| RequestError::bad("malformed", format!("invalid JSON: {e}")))?;
    match v {
        Value::Array(rows) => json_rows(&rows, meta),
        Value::Object(map) => match map.get("instances") {
            Some(Value::Array(rows)) => json_rows(rows, meta),
            Some(_) => Err(RequestError::bad(
                "malformed",
                "\"instances\" must be an array",
            )),
            None if !map.is_empty() && map.values().all(Value::is_array) => {
                json_columns(&map, meta)
            }
            None => json_rows(&[Value::Object(map)], meta),
        },
        _ => Err(RequestError::bad(
            "malformed",
            "expected an array of records, {\"instances\": [...]}, or an object of feature columns",
        )),
    }
}

fn json_rows(rows: &[Value], meta: &Metadata) -> Result<Batch, RequestError> {
    let n = meta.features.len();
    let mut data = Vec::with_capacity(rows.len() * n);
    for (i, row) in rows.iter().enumerate() {
        match row {
            Value::Object(m) => {
                for f in &meta.features {
                    let v = m.get(&f.name).ok_or_else(|| {
                        RequestError::bad(
                            "missing_field",
                            format!("row {i}: field {:?} is missing", f.name),
                        )
                    })?;
                    data.push(encode_json(f, v, i)?);
                }
            }
            Value::Array(cells) if cells.len() == n => {
                for (f, v) in meta.features.iter().zip(cells) {
                    data.push(encode_json(f, v, i)?);
                }
            }
            Value::Array(cells) => {
                return Err(RequestError::bad(
                    "wrong_arity",
                    format!("row {i}: {} values, the model takes {n}", cells.len()),
                ))
            }
            other => {
                return Err(RequestError::bad(
                    "malformed",
                    format!(
                        "row {i}: expected an object or an array, got {}",
                        describe(other)
                    ),
                ))
            }
        }
    }
    Ok(Batch {
        rows: rows.len(),
        data,
    })
}

fn json_columns(map: &Map<String, Value>, meta: &Metadata) -> Result<Batch, RequestError> {
    let mut cols = Vec::with_capacity(meta.features.len());
    for f in &meta.features {
        match map.get(&f.name) {
            Some(Value::Array(c)) => cols.push(c),
            _ => {
                return Err(RequestError::bad(
                    "missing_field",
                    format!("column {:?} is missing", f.name),
                ))
            }
        }
    }
    let rows = cols.first().map(|c| c.len()).unwrap_or(0);
    if let Some((f, c)) = meta
        .features
        .iter()
        .zip(&cols)
        .find(|(_, c)| c.len() != rows)
    {
        return Err(RequestError::bad(
            "wrong_arity",
            format!(
                "column {:?} has {} values, expected {rows}",
                f.name,
                c.len()
            ),
        ));
    }
    let mut data = Vec::with_capacity(rows * cols.len());
    for i in 0..rows {
        for (f, c) in meta.features.iter().zip(&cols) {
            data.push(encode_json(f, &c[i], i)?);
        }
    }
    Ok(Batch { rows, data })
}

/// Split one CSV line into cells (RFC 4180 quotes, `""` escapes a quote).
fn csv_cells(line: &str, row: usize) -> Result<Vec<String>, RequestError> {
    let mut cells = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => cur.push(c),
            (false, '"') if cur.trim().is_empty() => {
                cur.clear();
                quoted = true;
            }
            (false, ',') => cells.push(std::mem::take(&mut cur)),
            (false, c) => cur.push(c),
        }
    }
    if quoted {
        return Err(RequestError::bad(
            "malformed",
            format!("CSV line {row}: unterminated quote"),
        ));
    }
    cells.push(cur);
    Ok(cells.into_iter().map(|c| c.trim().to_string()).collect())
}

fn encode_csv(f: &Feature, cell: &str, row: usize) -> Result<f32, RequestError> {
    if cell.is_empty() {
        return Err(RequestError::bad(
            "missing_field",
            format!("row {row}: field {:?} is empty", f.name),
        ));
    }
    let wrong = |expected: &str| {
        RequestError::bad(
            "wrong_type",
            format!(
                "row {row}, field {:?}: expected {expected}, got {cell:?}",
                f.name
            ),
        )
    };
    match f.kind {
        FeatureType::Integer => match cell.parse::<f64>() {
            Ok(x) if x.fract() == 0.0 && x.is_finite() => Ok(x as f32),
            _ => Err(wrong("an integer")),
        },
        FeatureType::Number => match cell.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x as f32),
            _ => Err(wrong("a number")),
        },
        FeatureType::Category => category(f, cell, row),
    }
}

fn decode_csv(body: &[u8], meta: &Metadata) -> Result<Batch, RequestError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| RequestError::bad("malformed", "CSV body is not UTF-8"))?;
    let mut lines = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .peekable();
    let n = meta.features.len();
    // Header: the first line names every feature.
    let mut index: Option<Vec<usize>> = None;
    if let Some(first) = lines.peek() {
        let cells = csv_cells(first, 0)?;
        let positions: Option<Vec<usize>> = meta
            .features
            .iter()
            .map(|f| cells.iter().position(|c| *c == f.name))
            .collect();
        if positions.is_some() {
            index = positions;
            lines.next();
        }
    }
    let mut data = Vec::new();
    let mut rows = 0;
    for (i, line) in lines.enumerate() {
        let cells = csv_cells(line, i)?;
        match &index {
            Some(pos) => {
                for (f, p) in meta.features.iter().zip(pos) {
                    let cell = cells.get(*p).map(String::as_str).unwrap_or("");
                    data.push(encode_csv(f, cell, i)?);
                }
            }
            None if cells.len() == n => {
                for (f, cell) in meta.features.iter().zip(&cells) {
                    data.push(encode_csv(f, cell, i)?);
                }
            }
            None => {
                return Err(RequestError::bad(
                    "wrong_arity",
                    format!(
                        "CSV row {i}: {} values, the model takes {n} ({}) or a header naming them",
                        cells.len(),
                        names(meta)
                    ),
                ))
            }
        }
        rows += 1;
    }
    Ok(Batch { rows, data })
}

fn names(meta: &Metadata) -> String {
    meta.features
        .iter()
        .map(|f| f.name.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn label(meta: &Metadata, p: f32) -> &Value {
    let labels = &meta.prediction.labels;
    let i = usize::from(p >= meta.prediction.threshold);
    &labels[i.min(labels.len().saturating_sub(1))]
}

/// Probabilities rounded to 6 decimals (float32 noise is not information).
fn round6(p: f32) -> f64 {
    (f64::from(p) * 1e6).round() / 1e6
}

pub fn encode(format: Format, meta: &Metadata, probabilities: &[f32]) -> Vec<u8> {
    match format {
        Format::Json => {
            let preds: Vec<Value> = probabilities
                .iter()
                .map(|p| {
                    let mut m = Map::new();
                    m.insert(meta.prediction.label.clone(), label(meta, *p).clone());
                    m.insert(
                        meta.prediction.probability.clone(),
                        serde_json::json!(round6(*p)),
                    );
                    Value::Object(m)
                })
                .collect();
            serde_json::to_vec(&serde_json::json!({ "predictions": preds })).unwrap_or_default()
        }
        Format::Csv => {
            let mut out = String::new();
            for p in probabilities {
                let l = match label(meta, *p) {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                out.push_str(&format!("{l},{}\n", round6(*p)));
            }
            out.into_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Metadata {
        Metadata::from_json(
            br#"{"name":"t","version":"v1","features":[
                {"name":"pclass","type":"integer"},
                {"name":"sex","type":"category","values":["male","female"]},
                {"name":"age","type":"number"}],
              "prediction":{"label":"survived"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn records_columns_instances_and_positional_rows_decode_to_the_same_batch() {
        let m = meta();
        let want = Batch {
            rows: 2,
            data: vec![3.0, 0.0, 22.0, 1.0, 1.0, 38.5],
        };
        let bodies: [&[u8]; 5] = [
            br#"[{"pclass":3,"sex":"male","age":22,"extra":"ignored"},{"age":38.5,"sex":"female","pclass":1}]"#,
            br#"{"pclass":[3,1],"sex":["male","female"],"age":[22,38.5]}"#,
            br#"{"instances":[{"pclass":3,"sex":"male","age":22},{"pclass":1,"sex":"female","age":38.5}]}"#,
            br#"{"instances":[[3,"male",22],[1,"female",38.5]]}"#,
            br#"[[3,"male",22],[1.0,"female",38.5]]"#,
        ];
        for b in bodies {
            assert_eq!(
                decode(Format::Json, b, &m).unwrap(),
                want,
                "{}",
                String::from_utf8_lossy(b)
            );
        }
    }

    #[test]
    fn the_streaming_path_takes_rows_and_agrees_with_the_tree() {
        let m = meta();
        let rows: [&[u8]; 7] = [
            br#"[{"pclass":3,"sex":"male","age":22,"extra":"ignored"},{"age":38.5,"sex":"female","pclass":1}]"#,
            br#"{"instances":[{"pclass":3,"sex":"male","age":22},{"pclass":1,"sex":"female","age":38.5}]}"#,
            br#"{"instances":[[3,"male",22],[1,"female",38.5]],"later":{"keys":[1]}}"#,
            br#"[[3,"male",22],[1.0,"female",38.5]]"#,
            br#"[{"pclass":2,"sex":"male","age":-1e-3,"pclass":3,"age":1e300}]"#,
            br#"[[-0,"female",18446744073709551615]]"#,
            b"[]",
        ];
        for b in rows {
            let fast = crate::json_rows::decode(b, &m.features);
            let tree = decode_json_tree(b, &m).unwrap();
            assert_eq!(fast, Some(tree), "{}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn the_streaming_path_declines_other_shapes_and_every_error() {
        let m = meta();
        let declined: [&[u8]; 13] = [
            br#"{"pclass":[3,1],"sex":["male","female"],"age":[22,38.5]}"#,
            br#"{"pclass":3,"sex":"male","age":22}"#,
            br#"{"before":1,"instances":[[3,"male",22]]}"#,
            br#"{"instances":[[3,"male",22]],"instances":[[1,"male",2]]}"#,
            br#"{}"#,
            br#"[{"pclass":3,"sex":"male"}]"#,
            br#"[{"pclass":3.5,"sex":"male","age":1}]"#,
            br#"[{"pclass":3,"sex":"robot","age":1}]"#,
            br#"[{"pclass":3,"sex":"male","age":null}]"#,
            br#"[[3,"male"]]"#,
            br#"[[3,"male",22,1]]"#,
            br#"[[3,"male",22]] trailing"#,
            b"[{",
        ];
        for b in declined {
            assert_eq!(
                crate::json_rows::decode(b, &m.features),
                None,
                "{}",
                String::from_utf8_lossy(b)
            );
        }
    }

    #[test]
    fn csv_with_or_without_header_decodes_by_name_or_position() {
        let m = meta();
        let want = Batch {
            rows: 2,
            data: vec![3.0, 0.0, 22.0, 1.0, 1.0, 38.5],
        };
        assert_eq!(
            decode(Format::Csv, b"3,male,22\r\n1,\"female\",38.5\n", &m).unwrap(),
            want
        );
        assert_eq!(
            decode(
                Format::Csv,
                b"age,name,sex,pclass\n22,\"Braund, Mr. Owen\",male,3\n38.5,x,female,1\n",
                &m
            )
            .unwrap(),
            want
        );
    }

    #[test]
    fn bad_rows_are_400s_that_name_the_row_and_field() {
        let m = meta();
        let e = decode(Format::Json, br#"[{"pclass":3,"sex":"male"}]"#, &m).unwrap_err();
        assert_eq!((e.status, e.code), (400, "missing_field"));
        assert!(e.message.contains("\"age\""), "{}", e.message);
        let e = decode(
            Format::Json,
            br#"[{"pclass":3.5,"sex":"male","age":1}]"#,
            &m,
        )
        .unwrap_err();
        assert_eq!(e.code, "wrong_type");
        assert!(
            e.message
                .contains("row 0, field \"pclass\": expected an integer"),
            "{}",
            e.message
        );
        let e = decode(Format::Json, br#"[{"pclass":3,"sex":"robot","age":1}]"#, &m).unwrap_err();
        assert_eq!(e.code, "unknown_category");
        let e = decode(
            Format::Json,
            br#"{"pclass":[3],"sex":["male","male"],"age":[1]}"#,
            &m,
        )
        .unwrap_err();
        assert_eq!(e.code, "wrong_arity");
        let e = decode(Format::Json, b"[{", &m).unwrap_err();
        assert_eq!((e.status, e.code), (400, "malformed"));
        let e = decode(Format::Csv, b"3,male\n", &m).unwrap_err();
        assert_eq!(e.code, "wrong_arity");
        let e = decode(Format::Csv, b"3,male,old\n", &m).unwrap_err();
        assert!(
            e.message
                .contains("field \"age\": expected a number, got \"old\""),
            "{}",
            e.message
        );
        assert_eq!(decode(Format::Json, b"[]", &m).unwrap_err().code, "empty");
    }

    #[test]
    fn content_negotiation() {
        assert_eq!(
            request_format(Some("application/json; charset=utf-8")).unwrap(),
            Format::Json
        );
        assert_eq!(request_format(Some("TEXT/CSV")).unwrap(), Format::Csv);
        assert_eq!(
            request_format(Some("application/x-www-form-urlencoded"))
                .unwrap_err()
                .status,
            415
        );
        assert_eq!(request_format(None).unwrap_err().status, 415);
        assert_eq!(response_format(None).unwrap(), Format::Json);
        assert_eq!(
            response_format(Some("text/csv, application/json")).unwrap(),
            Format::Csv
        );
        assert_eq!(response_format(Some("*/*")).unwrap(), Format::Json);
        assert_eq!(response_format(Some("image/png")).unwrap_err().status, 406);
    }

    #[test]
    fn predictions_use_the_metadata_names_and_threshold() {
        let m = meta();
        let json: Value =
            serde_json::from_slice(&encode(Format::Json, &m, &[0.8312345, 0.2])).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"predictions":[{"survived":1,"probability":0.831235},{"survived":0,"probability":0.2}]})
        );
        assert_eq!(
            String::from_utf8(encode(Format::Csv, &m, &[0.5, 0.25])).unwrap(),
            "1,0.5\n0,0.25\n"
        );
    }
}
