//! A rough count of the tokens a request will take, without a tokenizer: about four bytes of
//! text a token (the usual rule of thumb for English and code; other scripts take more
//! tokens a byte, so this undercounts them), plus a few tokens a message for the roles and
//! separators. Used where an estimate is all that is needed and all that can be had before
//! the provider answers: `count_tokens`, the input count announced at the start of an
//! Anthropic stream.

use serde_json::Value;

/// Tokens the framing of one message costs (role, separators), as OpenAI documents it.
const PER_MESSAGE: u64 = 4;
/// Tokens an image is counted as (the providers' own counts vary with its size), and so a
/// file (a PDF) or a clip of audio: their size in tokens cannot be told from their bytes,
/// and their base64 counted as text (a 700 KB PDF as 233,000 tokens) would skip a model for
/// "context too small" that the provider would take. Counting low leaves that to the
/// provider's own check.
const PER_IMAGE: u64 = 765;

/// The estimated tokens of a list of OpenAI chat messages and, when given, its tools.
pub fn estimate<'a>(messages: impl IntoIterator<Item = &'a Value>, tools: Option<&Value>) -> u64 {
    let mut total = 3; // the reply's priming
    for m in messages {
        total += PER_MESSAGE + text_tokens(m);
    }
    if let Some(tools) = tools {
        total += bytes_to_tokens(tools.to_string().len());
    }
    total
}

/// Tokens of the text inside one value: every string counts, images count a fixed amount,
/// keys and punctuation of the JSON do not.
fn text_tokens(v: &Value) -> u64 {
    match v {
        Value::String(s) => bytes_to_tokens(s.len()),
        Value::Array(items) => items.iter().map(text_tokens).sum(),
        Value::Object(o)
            if matches!(
                o.get("type").and_then(Value::as_str),
                Some("image_url" | "file" | "input_audio")
            ) =>
        {
            PER_IMAGE
        }
        Value::Object(o) => o
            .iter()
            .filter(|(k, _)| k.as_str() != "type" && k.as_str() != "role")
            .map(|(_, v)| text_tokens(v))
            .sum(),
        _ => 0,
    }
}

fn bytes_to_tokens(n: usize) -> u64 {
    (n as u64).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn estimates_grow_with_the_text() {
        let short = estimate(&[json!({"role": "user", "content": "Hello"})], None);
        assert_eq!(short, 3 + 4 + 2);
        let long = estimate(
            &[json!({"role": "user", "content": "x".repeat(4000)})],
            None,
        );
        assert_eq!(long, 3 + 4 + 1000);
        let parts = estimate(
            &[json!({"role": "user", "content": [
                {"type": "text", "text": "abcd"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]})],
            None,
        );
        assert_eq!(parts, 3 + 4 + 1 + PER_IMAGE);
        // A file's or a clip's base64 is not text: each counts as an image does.
        let pdf = "JVBE".repeat(100_000);
        let files = estimate(
            [&json!({"role": "user", "content": [
                {"type": "file", "file": {"filename": "a.pdf", "file_data": format!("data:application/pdf;base64,{pdf}")}},
                {"type": "input_audio", "input_audio": {"data": pdf, "format": "wav"}}]})],
            None,
        );
        assert_eq!(files, 3 + 4 + 2 * PER_IMAGE);
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        assert!(estimate(&[], Some(&tools)) > 3);
        assert_eq!(estimate(&[], None), 3);
    }
}
