//! JSON as a credential spec's reader must take it: Windows looks keys up ignoring case, so a
//! key given twice in one object (also when only its case differs) is ambiguous. serde_json's
//! `Value` silently keeps the last one; this builds the same value but refuses duplicates.

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::names::fold_case;

/// The one JSON value of `text` (JSON whitespace around it allowed), or why it is not one.
pub(super) fn parse(text: &str) -> Result<Value, String> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = StrictValue.deserialize(&mut deserializer).map_err(|e| e.to_string())?;
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(value)
}

struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E: Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: Error>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E: Error>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E: Error>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E: Error>(self, value: f64) -> Result<Value, E> {
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }

    fn visit_str<E: Error>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E: Error>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Value, A::Error> {
        let mut values = Vec::new();
        while let Some(value) = items.next_element_seed(StrictValue)? {
            values.push(value);
        }
        Ok(Value::Array(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Value, A::Error> {
        let mut seen = HashSet::new();
        let mut object = Map::new();
        while let Some(key) = entries.next_key::<String>()? {
            if !seen.insert(fold_case(&key)) {
                return Err(A::Error::custom(format!(
                    "key {key:?} is given twice in one object (keys are compared ignoring case)"
                )));
            }
            let value = entries.next_value_seed(StrictValue)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_what_serde_json_builds() {
        let text = r#" {"a": [1, -2, 2.5, true, null, "x"], "b": {"c": {}}} "#;
        assert_eq!(parse(text).unwrap(), serde_json::from_str::<Value>(text).unwrap());
    }

    #[test]
    fn refuses_a_key_given_twice_at_any_depth_and_in_any_case() {
        for text in [
            r#"{"Name": "a", "Name": "b"}"#,
            r#"{"Name": "a", "NAME": "b"}"#,
            r#"{"x": [{"Scope": "a", "scope": "b"}]}"#,
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains("given twice"), "{text}: {error}");
        }
        assert_eq!(
            parse(r#"{"a": {"k": 1}, "b": {"k": 2}}"#).unwrap(),
            json!({"a": {"k": 1}, "b": {"k": 2}})
        );
    }

    #[test]
    fn refuses_anything_after_the_value() {
        assert!(parse(r#"{"a": 1} {"a": 2}"#).is_err());
        assert!(parse(r#"{"a": 1} x"#).is_err());
        assert!(parse("\u{feff}{}").is_err());
        assert!(parse("{} \n").is_ok());
    }
}
