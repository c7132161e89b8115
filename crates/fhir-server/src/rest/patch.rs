//! JSON Patch (RFC 6902) over `serde_json::Value`, applied all-or-nothing to a copy of the document.

use serde_json::Value;

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document itself is not valid JSON Patch (400).
    #[error("malformed JSON Patch: {0}")]
    Malformed(String),
    /// The patch is well formed but cannot be applied to this resource, including a failed `test` (422).
    #[error("JSON Patch cannot be applied: {0}")]
    Failed(String),
}

/// Applies every operation of `patch` (a JSON array) to a copy of `document`; on any error the original is untouched.
pub fn apply(document: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Array(operations) = patch else {
        return Err(PatchError::Malformed("the patch document must be a JSON array of operations".into()));
    };
    let mut doc = document.clone();
    for (i, operation) in operations.iter().enumerate() {
        apply_one(&mut doc, operation).map_err(|e| match e {
            PatchError::Malformed(why) => PatchError::Malformed(format!("operation {i}: {why}")),
            PatchError::Failed(why) => PatchError::Failed(format!("operation {i}: {why}")),
        })?;
    }
    Ok(doc)
}

fn apply_one(doc: &mut Value, operation: &Value) -> Result<(), PatchError> {
    let Value::Object(fields) = operation else {
        return Err(PatchError::Malformed("an operation must be a JSON object".into()));
    };
    let text = |name: &str| -> Result<&str, PatchError> {
        fields
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| PatchError::Malformed(format!("`{name}` is missing or not a string")))
    };
    let value = || fields.get("value").cloned().ok_or_else(|| PatchError::Malformed("`value` is missing".into()));
    let op = text("op")?;
    let path = text("path")?;
    check_pointer(path)?;
    match op {
        "add" => add(doc, path, value()?),
        "remove" => remove(doc, path).map(drop),
        "replace" => {
            let new = value()?;
            let target = doc.pointer_mut(path).ok_or_else(|| missing(path))?;
            *target = new;
            Ok(())
        }
        "move" => {
            let from = text("from")?;
            check_pointer(from)?;
            if path.starts_with(from) && path[from.len()..].starts_with('/') {
                return Err(PatchError::Failed("cannot move a value into one of its own children".into()));
            }
            let moved = remove(doc, from)?;
            add(doc, path, moved)
        }
        "copy" => {
            let from = text("from")?;
            check_pointer(from)?;
            let copied = doc.pointer(from).cloned().ok_or_else(|| missing(from))?;
            add(doc, path, copied)
        }
        "test" => {
            let expected = value()?;
            let actual = doc.pointer(path).ok_or_else(|| missing(path))?;
            if json_equal(actual, &expected) {
                Ok(())
            } else {
                Err(PatchError::Failed(format!("test failed at {path}")))
            }
        }
        _ => Err(PatchError::Malformed("`op` must be add, remove, replace, move, copy or test".into())),
    }
}

fn missing(path: &str) -> PatchError {
    PatchError::Failed(format!("no value at {path}"))
}

/// A JSON Pointer (RFC 6901) is empty or starts with `/`, and `~` is only ever followed by `0` or `1`.
fn check_pointer(pointer: &str) -> Result<(), PatchError> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(PatchError::Malformed("a JSON Pointer must be empty or start with '/'".into()));
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(PatchError::Malformed("'~' in a JSON Pointer must be followed by 0 or 1".into()));
        }
    }
    Ok(())
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Splits a non-empty pointer into its parent pointer and its last (unescaped) reference token.
fn split(pointer: &str) -> (&str, String) {
    match pointer.rfind('/') {
        Some(at) => (&pointer[..at], unescape(&pointer[at + 1..])),
        None => ("", unescape(pointer)),
    }
}

/// An array index per RFC 6901: digits without leading zeros.
fn index(token: &str) -> Option<usize> {
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), PatchError> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, token) = split(path);
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(token, value);
            Ok(())
        }
        Some(Value::Array(items)) => {
            let at = if token == "-" { Some(items.len()) } else { index(&token) };
            match at {
                Some(at) if at <= items.len() => {
                    items.insert(at, value);
                    Ok(())
                }
                _ => Err(PatchError::Failed(format!("array index out of range at {path}"))),
            }
        }
        Some(_) => Err(PatchError::Failed(format!("the parent of {path} is not an object or array"))),
        None => Err(missing(parent)),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, PatchError> {
    if path.is_empty() {
        return Err(PatchError::Failed("cannot remove the whole document".into()));
    }
    let (parent, token) = split(path);
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&token).ok_or_else(|| missing(path)),
        Some(Value::Array(items)) => match index(&token) {
            Some(at) if at < items.len() => Ok(items.remove(at)),
            _ => Err(missing(path)),
        },
        _ => Err(missing(path)),
    }
}

/// JSON equality as RFC 6902 `test` defines it: numbers compare by value, so 1 equals 1.0.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc6902_operations() {
        let doc = json!({"a": {"b": [1, 2]}, "c": "x"});
        let out = apply(
            &doc,
            &json!([
                {"op": "add", "path": "/a/b/1", "value": 9},
                {"op": "add", "path": "/a/b/-", "value": 3},
                {"op": "remove", "path": "/a/b/0"},
                {"op": "replace", "path": "/c", "value": "y"},
                {"op": "copy", "from": "/c", "path": "/d"},
                {"op": "move", "from": "/d", "path": "/e~1f"},
                {"op": "test", "path": "/a/b", "value": [9.0, 2, 3]},
            ]),
        )
        .expect("applies");
        assert_eq!(out, json!({"a": {"b": [9, 2, 3]}, "c": "y", "e/f": "y"}));
    }

    #[test]
    fn failures_leave_the_document_alone() {
        let doc = json!({"a": 1});
        assert!(matches!(apply(&doc, &json!([{"op": "test", "path": "/a", "value": 2}])), Err(PatchError::Failed(_))));
        assert!(matches!(apply(&doc, &json!([{"op": "remove", "path": "/b"}])), Err(PatchError::Failed(_))));
        assert!(matches!(apply(&doc, &json!([{"op": "add", "path": "/x/y", "value": 1}])), Err(PatchError::Failed(_))));
        assert!(matches!(apply(&doc, &json!({"op": "add"})), Err(PatchError::Malformed(_))));
        assert!(matches!(apply(&doc, &json!([{"op": "jump", "path": "/a"}])), Err(PatchError::Malformed(_))));
        assert!(matches!(apply(&doc, &json!([{"op": "add", "path": "a", "value": 1}])), Err(PatchError::Malformed(_))));
        assert!(matches!(apply(&doc, &json!([{"op": "add", "path": "/a"}])), Err(PatchError::Malformed(_))));
        assert!(matches!(
            apply(&json!({"a": {"b": 1}}), &json!([{"op": "move", "from": "/a", "path": "/a/c"}])),
            Err(PatchError::Failed(_))
        ));
    }
}
