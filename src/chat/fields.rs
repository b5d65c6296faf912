//! Chat fields that the Messages and Responses translations both write, from their own
//! names for the same settings, so that the two endpoints send providers the same thing:
//! a structured-output format as `response_format`, an effort as `reasoning_effort`, and a
//! function tool's `strict`.

use serde_json::{Map, Value, json};

use crate::error::Error;

/// A format in the Responses API's `text.format` shape (`type`; for `json_schema` also
/// `name`, `schema`, and `strict`, `description` when given) as chat's `response_format`;
/// `None` for plain text. For errors, `param` is the client's top-level field (`text`),
/// `path` the format's place in it (`text.format`).
pub(crate) fn response_format(
    format: &Value,
    param: &str,
    path: &str,
) -> Result<Option<Value>, Error> {
    let bad = |what: &str| Error::invalid_param(param, format!("{path}: {what}"));
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let name = format
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("name is required for json_schema"))?;
            let schema = format
                .get("schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| bad("schema is required for json_schema (a JSON schema object)"))?;
            let mut spec = json!({"name": name, "schema": schema});
            for key in ["strict", "description"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    spec[key] = v.clone();
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": spec})))
        }
        _ => Err(bad("type must be 'text', 'json_object' or 'json_schema'")),
    }
}

/// An effort (`reasoning.effort`, `output_config.effort`) as `reasoning_effort`, its word
/// as given: providers' scales differ (OpenAI's runs from `minimal` to `xhigh`, Gemini's
/// and Grok's are shorter), so a renaming right for one would be wrong for another, and a
/// provider that does not take a word — or the setting — says so itself, as OpenAI's and
/// Anthropic's own APIs do. For errors, `param` is the client's top-level field
/// (`reasoning`), `path` the effort's place in it (`reasoning.effort`).
pub(crate) fn reasoning_effort(
    effort: Option<&Value>,
    (param, path): (&str, &str),
    out: &mut Map<String, Value>,
) -> Result<(), Error> {
    match effort {
        None | Some(Value::Null) => Ok(()),
        Some(v @ Value::String(_)) => {
            out.insert("reasoning_effort".into(), v.clone());
            Ok(())
        }
        Some(_) => Err(Error::invalid_param(
            param,
            format!("{path}: must be a string (such as 'low', 'medium' or 'high')"),
        )),
    }
}

/// A tool's `strict: true` on its chat `function`. Sent only when true: some providers
/// refuse the unknown key, and `false` is everyone's default.
pub(crate) fn strict(tool: &Value, function: &mut Value) {
    if tool.get("strict") == Some(&Value::Bool(true)) {
        function["strict"] = json!(true);
    }
}
