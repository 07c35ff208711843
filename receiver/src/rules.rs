//! Seed 004's payload rules for one collection: required fields, types and bounds,
//! answered with a `422` that names the field. Pure functions over a record.

use serde_json::Value;

use crate::config::{CollectionRules, FieldType, Terminal};

/// Why a record was refused: the field and what was wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub field: String,
    pub message: String,
}

impl Rejection {
    /// `progress: must be between 0 and 100 (got 150)`.
    pub fn text(&self) -> String {
        if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}

fn reject(field: &str, message: impl Into<String>) -> Rejection {
    Rejection {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Checks a record's JSON text against the collection's rules. Without rules nothing
/// is parsed: the text need only be an object without a NUL character (PostgreSQL's
/// JSONB cannot hold one, and both storages must accept the same records); with rules
/// it is parsed and checked field by field.
pub fn validate_text(text: &str, rules: Option<&CollectionRules>) -> Result<(), Rejection> {
    if !text.starts_with('{') {
        return Err(reject("", "the body must be a JSON object (a record)"));
    }
    if has_nul_escape(text) {
        let record: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let path = find_nul(&record, String::new()).unwrap_or_default();
        return Err(reject(
            &path,
            "contains a NUL character (\\u0000), which the database cannot store",
        ));
    }
    match rules {
        None => Ok(()),
        Some(rules) => match serde_json::from_str::<Value>(text) {
            Ok(record) => validate(&record, Some(rules)),
            Err(err) => Err(reject("", format!("the record is not valid JSON: {err}"))),
        },
    }
}

/// Does the text hold `\u0000` (a backslash that is not itself escaped, then u0000)?
fn has_nul_escape(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find("u0000").map(|i| i + from) {
        let backslashes = bytes[..at]
            .iter()
            .rev()
            .take_while(|b| **b == b'\\')
            .count();
        if backslashes % 2 == 1 {
            return true;
        }
        from = at + 5;
    }
    false
}

/// Checks a record against the collection's rules (none: any JSON object passes).
pub fn validate(record: &Value, rules: Option<&CollectionRules>) -> Result<(), Rejection> {
    let Value::Object(fields) = record else {
        return Err(reject("", "the body must be a JSON object (a record)"));
    };
    if let Some(path) = find_nul(record, String::new()) {
        return Err(reject(
            &path,
            "contains a NUL character (\\u0000), which the database cannot store",
        ));
    }
    let Some(rules) = rules else {
        return Ok(());
    };
    for field in &rules.required {
        match fields.get(field) {
            None => return Err(reject(field, "is required")),
            Some(Value::Null) => return Err(reject(field, "is required (got null)")),
            Some(_) => {}
        }
    }
    for (field, kind) in &rules.types {
        let Some(value) = fields.get(field).filter(|v| !v.is_null()) else {
            continue;
        };
        let ok = match kind {
            FieldType::String => value.is_string(),
            FieldType::Number => value.is_number(),
            FieldType::Integer => value.is_i64() || value.is_u64(),
            FieldType::Boolean => value.is_boolean(),
            FieldType::Object => value.is_object(),
            FieldType::Array => value.is_array(),
        };
        if !ok {
            return Err(reject(
                field,
                format!("must be {} (got {})", kind.name(), short(value)),
            ));
        }
    }
    for (field, [low, high]) in &rules.bounds {
        let Some(value) = fields.get(field).filter(|v| !v.is_null()) else {
            continue;
        };
        let Some(n) = value.as_f64() else {
            return Err(reject(
                field,
                format!("must be a number (got {})", short(value)),
            ));
        };
        if !(n >= *low && n <= *high) {
            return Err(reject(
                field,
                format!("must be between {low} and {high} (got {})", short(value)),
            ));
        }
    }
    Ok(())
}

/// Is a stored record (its terminal field's value) in a terminal state?
pub fn is_terminal(value: Option<&Value>, terminal: &Terminal) -> bool {
    let text = match value {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => return false,
        Some(other) => other.to_string(),
    };
    terminal.values.contains(&text)
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

fn find_nul(value: &Value, path: String) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => Some(path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_nul(v, format!("{path}[{i}]"))),
        Value::Object(fields) => fields.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                return Some(path.clone());
            }
            let inner = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            find_nul(v, inner)
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn downloads() -> CollectionRules {
        CollectionRules {
            name: "downloads".into(),
            required: vec!["id".into(), "status".into()],
            types: [("status".to_string(), FieldType::String)].into(),
            bounds: [("progress".to_string(), [0.0, 100.0])].into(),
            terminal: Some(Terminal {
                field: "status".into(),
                values: vec!["completed".into(), "failed".into()],
            }),
            max_update_rate: Some(4.0),
        }
    }

    #[test]
    fn seed_004_payload_rules() {
        let rules = downloads();
        let ok = json!({"id": "j1", "status": "running", "progress": 42.5});
        assert_eq!(validate(&ok, Some(&rules)), Ok(()));
        let missing = validate(&json!({"id": "j1"}), Some(&rules)).expect_err("required");
        assert_eq!(missing.text(), "status: is required");
        let null = validate(&json!({"id": "j1", "status": null}), Some(&rules)).expect_err("null");
        assert_eq!(null.field, "status");
        let typed = validate(&json!({"id": "j1", "status": 3}), Some(&rules)).expect_err("type");
        assert_eq!(typed.text(), "status: must be a string (got 3)");
        let high = validate(
            &json!({"id": "j", "status": "running", "progress": 100.5}),
            Some(&rules),
        )
        .expect_err("bounds");
        assert_eq!(
            high.text(),
            "progress: must be between 0 and 100 (got 100.5)"
        );
        let low = validate(
            &json!({"id": "j", "status": "running", "progress": -1}),
            Some(&rules),
        )
        .expect_err("bounds");
        assert_eq!(low.field, "progress");
        let text = validate(
            &json!({"id": "j", "status": "running", "progress": "50"}),
            Some(&rules),
        )
        .expect_err("not a number");
        assert_eq!(text.text(), "progress: must be a number (got \"50\")");
        assert_eq!(
            validate(
                &json!({"id": "j", "status": "running", "progress": 0}),
                Some(&rules)
            ),
            Ok(())
        );
        assert_eq!(
            validate(
                &json!({"id": "j", "status": "running", "progress": 100}),
                Some(&rules)
            ),
            Ok(())
        );
    }

    #[test]
    fn only_objects_are_records_and_nul_is_refused() {
        assert!(validate(&json!([1, 2]), None).is_err());
        let nul = validate(&json!({"a": {"b": "x\u{0}y"}}), None).expect_err("nul");
        assert_eq!(nul.field, "a.b");
    }

    #[test]
    fn the_text_check_parses_only_with_rules() {
        assert!(validate_text("{\"a\":1}", None).is_ok());
        assert!(validate_text("[1]", None).is_err());
        let nul = validate_text("{\"a\":{\"b\":\"x\\u0000\"}}", None).expect_err("nul");
        assert_eq!(nul.field, "a.b");
        assert!(
            validate_text("{\"a\":\"\\\\u0000\"}", None).is_ok(),
            "an escaped backslash"
        );
        let rules = downloads();
        let bad = validate_text(
            "{\"id\":\"j\",\"status\":\"x\",\"progress\":101}",
            Some(&rules),
        )
        .expect_err("bounds");
        assert_eq!(bad.field, "progress");
    }

    #[test]
    fn terminal_values() {
        let rules = downloads();
        let terminal = rules.terminal.as_ref().expect("terminal");
        assert!(is_terminal(Some(&json!("completed")), terminal));
        assert!(!is_terminal(Some(&json!("running")), terminal));
        assert!(!is_terminal(None, terminal));
    }
}
