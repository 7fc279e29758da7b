//! Shared-object slot values: the AMF0 value model, stored in the log, with a JSON
//! mapping for the admin API.
//!
//! AMF0 has number, boolean, string, null/undefined, object (and ECMA array), strict
//! array and date. JSON carries all of them except dates, which map to
//! `{"$date": <milliseconds since the epoch>}`. Non-finite numbers (legal in AMF0)
//! become `null` in JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Deepest nesting of arrays and objects a value may have.
pub const MAX_DEPTH: usize = 32;

/// An AMF0-compatible value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    /// Milliseconds since the Unix epoch (AMF0 dates carry no usable time zone).
    Date(f64),
    Array(Vec<Value>),
    Object(BTreeMap<String, Value>),
}

/// Why a JSON document is not a valid slot value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Arrays and objects nest deeper than [`MAX_DEPTH`].
    #[error("value nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A number JSON can express but AMF0's double cannot (e.g. beyond f64 range).
    #[error("number {0} is not representable as an AMF0 number")]
    BadNumber(String),
    /// `{"$date": …}` whose value is not a finite number.
    #[error("\"$date\" must be a finite number of milliseconds")]
    BadDate,
}

impl Value {
    /// Converts a JSON document into a slot value.
    pub fn from_json(json: &serde_json::Value) -> Result<Value, ValueError> {
        Self::from_json_at(json, 0)
    }

    fn from_json_at(json: &serde_json::Value, depth: usize) -> Result<Value, ValueError> {
        if depth > MAX_DEPTH {
            return Err(ValueError::TooDeep);
        }
        Ok(match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_f64() {
                Some(f) if f.is_finite() => Value::Number(f),
                _ => return Err(ValueError::BadNumber(n.to_string())),
            },
            serde_json::Value::String(s) => Value::String(s.clone()),
            serde_json::Value::Array(items) => {
                Value::Array(items.iter().map(|v| Self::from_json_at(v, depth + 1)).collect::<Result<_, _>>()?)
            }
            serde_json::Value::Object(map) => {
                if map.len() == 1 {
                    if let Some(d) = map.get("$date") {
                        return match d.as_f64() {
                            Some(ms) if ms.is_finite() => Ok(Value::Date(ms)),
                            _ => Err(ValueError::BadDate),
                        };
                    }
                }
                Value::Object(
                    map.iter()
                        .map(|(k, v)| Ok((k.clone(), Self::from_json_at(v, depth + 1)?)))
                        .collect::<Result<_, _>>()?,
                )
            }
        })
    }

    /// Converts a slot value into JSON.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Number(n) => number_json(*n),
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Date(ms) => serde_json::json!({ "$date": number_json(*ms) }),
            Value::Array(items) => serde_json::Value::Array(items.iter().map(Value::to_json).collect()),
            Value::Object(map) => {
                serde_json::Value::Object(map.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    /// Bytes this value accounts for against size limits: an upper bound of its AMF0
    /// encoding.
    pub fn encoded_len(&self) -> usize {
        match self {
            Value::Null | Value::Bool(_) => 2,
            Value::Number(_) => 9,
            Value::Date(_) => 11,
            Value::String(s) => 5 + s.len(),
            Value::Array(items) => 5 + items.iter().map(Value::encoded_len).sum::<usize>(),
            Value::Object(map) => 4 + map.iter().map(|(k, v)| 2 + k.len() + v.encoded_len()).sum::<usize>(),
        }
    }
}

/// Integers print as integers (`3`, not `3.0`); non-finite numbers become `null`.
fn number_json(n: f64) -> serde_json::Value {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        serde_json::Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, serde_json::Value::Number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trip_keeps_every_kind() {
        let doc = json!({
            "n": 3, "f": 1.5, "b": true, "s": "hi", "z": null,
            "a": [1, "x", [false]], "o": {"k": {"deep": 1}}, "d": {"$date": 1700000000000i64}
        });
        let v = Value::from_json(&doc).unwrap();
        match &v {
            Value::Object(m) => assert_eq!(m["d"], Value::Date(1_700_000_000_000.0)),
            other => panic!("expected an object, got {other:?}"),
        }
        assert_eq!(v.to_json(), doc);
    }

    #[test]
    fn bad_dates_and_deep_nesting_are_rejected() {
        assert_eq!(Value::from_json(&json!({"$date": "x"})), Err(ValueError::BadDate));
        let mut deep = json!(1);
        for _ in 0..=MAX_DEPTH + 1 {
            deep = json!([deep]);
        }
        assert_eq!(Value::from_json(&deep), Err(ValueError::TooDeep));
    }

    #[test]
    fn non_finite_numbers_become_null() {
        assert_eq!(Value::Number(f64::NAN).to_json(), serde_json::Value::Null);
    }

    #[test]
    fn values_survive_bincode() {
        let v = Value::Object(BTreeMap::from([("x".into(), Value::Date(5.0))]));
        let bytes = bincode::serde::encode_to_vec(&v, bincode::config::standard()).unwrap();
        let (back, _): (Value, usize) = bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, v);
    }
}
