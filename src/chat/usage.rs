//! Token usage as a provider reports it, read leniently (it is bookkeeping: an odd count
//! must never cost the client an answer the provider has billed).

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Visitor methods giving `$none` for the values a lenient usage reader does not use (an
/// array is read to its end first): arrays, booleans and null; with `numbers`, numbers and
/// strings too.
macro_rules! otherwise {
    ($none:expr) => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($none)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($none)
        }
    };
    ($none:expr, numbers) => {
        otherwise!($none);
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($none)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($none)
        }
    };
}

/// The largest token count read as reported: one billion, far above any model's context
/// window or output limit. A count past it (`1e30`, or `18446744073709551615`, a -1 written
/// as an unsigned 64-bit number) is a provider's bug, not a call; booked, it would saturate
/// the usage totals and `usage.json` for good.
pub const MAX_PLAUSIBLE_TOKENS: u64 = 1_000_000_000;

/// Token usage as a provider reports it (`usage` of an answer or of a stream's last chunk).
///
/// Read leniently: usage is bookkeeping, and an answer the provider has billed must reach
/// the client even when its usage is odd. A count that is not a non-negative number (a
/// negative one, as o3 has been seen to send; a string of digits is read as its number; a
/// fraction is cut to its whole part), or is past [`MAX_PLAUSIBLE_TOKENS`], is taken as
/// not reported, and a `usage` that is not an object as no usage. Moonshot's top-level
/// `cached_tokens` counts as `prompt_tokens_details.cached_tokens`, and the top-level
/// `cache_creation_input_tokens` of Anthropic-compatible endpoints as
/// `prompt_tokens_details.cache_write_tokens` (OpenRouter's); cached and written tokens
/// are never more than the prompt's ([`Usage::cached_tokens`],
/// [`Usage::cache_write_tokens`]).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct PromptDetails {
    /// Prompt tokens read from the provider's prompt cache.
    pub cached_tokens: Option<u64>,
    /// Prompt tokens written to the provider's prompt cache (a Claude model's prefix
    /// marked with `cache_control`, billed at more than the input price).
    pub cache_write_tokens: Option<u64>,
}

/// The members of a usage object the gateway reads (all others skipped unread).
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum UsageField {
    PromptTokens,
    CompletionTokens,
    PromptTokensDetails,
    CachedTokens,
    CacheWriteTokens,
    CacheCreationInputTokens,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for Usage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Usage, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Usage;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a usage object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Usage, A::Error> {
                let mut usage = Usage::default();
                let (mut cached, mut written) = (None, None);
                while let Some(field) = map.next_key::<UsageField>()? {
                    match field {
                        UsageField::PromptTokens => {
                            usage.prompt_tokens = map.next_value::<Count>()?.0
                        }
                        UsageField::CompletionTokens => {
                            usage.completion_tokens = map.next_value::<Count>()?.0
                        }
                        UsageField::PromptTokensDetails => {
                            usage.prompt_tokens_details = map.next_value::<Details>()?.0
                        }
                        UsageField::CachedTokens => cached = map.next_value::<Count>()?.0,
                        UsageField::CacheWriteTokens | UsageField::CacheCreationInputTokens => {
                            written = map.next_value::<Count>()?.0
                        }
                        UsageField::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                // Counts beside the others stand for those the details leave out.
                if cached.is_some() || written.is_some() {
                    let details = usage.prompt_tokens_details.get_or_insert_default();
                    details.cached_tokens = details.cached_tokens.or(cached);
                    details.cache_write_tokens = details.cache_write_tokens.or(written);
                }
                Ok(usage)
            }
            otherwise!(Usage::default(), numbers);
        }
        d.deserialize_any(Fields)
    }
}

/// `prompt_tokens_details`, leniently: anything but an object is none.
struct Details(Option<PromptDetails>);

impl<'de> Deserialize<'de> for Details {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Details, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Details;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("prompt token details")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Details, A::Error> {
                let mut details = PromptDetails::default();
                while let Some(field) = map.next_key::<UsageField>()? {
                    match field {
                        UsageField::CachedTokens => {
                            details.cached_tokens = map.next_value::<Count>()?.0
                        }
                        UsageField::CacheWriteTokens | UsageField::CacheCreationInputTokens => {
                            details.cache_write_tokens = map.next_value::<Count>()?.0
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Details(Some(details)))
            }
            otherwise!(Details(None), numbers);
        }
        d.deserialize_any(Fields)
    }
}

/// A token count, leniently: a non-negative number (a fraction cut to its whole part) or
/// a string of digits, up to [`MAX_PLAUSIBLE_TOKENS`]; anything else is not reported.
struct Count(Option<u64>);

impl Count {
    fn of(n: Option<u64>) -> Count {
        Count(n.filter(|&n| n <= MAX_PLAUSIBLE_TOKENS))
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
        struct Number;
        impl<'de> Visitor<'de> for Number {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a token count")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count::of(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                Ok(Count::of(u64::try_from(v).ok()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
                // (`as` saturates: a count past u64 is u64::MAX, past the bound too.)
                Ok(Count::of((v.is_finite() && v >= 0.0).then_some(v as u64)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Count, E> {
                Ok(Count::of(v.trim().parse().ok()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Count, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Count(None))
            }
            otherwise!(Count(None));
        }
        d.deserialize_any(Number)
    }
}

impl Usage {
    /// Takes what `other` reports, keeping what it leaves out.
    pub fn merge(&mut self, other: &Usage) {
        self.prompt_tokens = other.prompt_tokens.or(self.prompt_tokens);
        self.completion_tokens = other.completion_tokens.or(self.completion_tokens);
        if other.prompt_tokens_details.is_some() {
            self.prompt_tokens_details = other.prompt_tokens_details.clone();
        }
    }

    /// Prompt tokens read from the cache, 0 when not reported; never more than the prompt
    /// tokens when those are reported (a provider that says 25 of 20 prompt tokens came
    /// from its cache means all 20), so that the translations agree: Anthropic's
    /// `input_tokens` (the prompt without the cached part) is never negative, and the
    /// Responses `cached_tokens` never more than its `input_tokens`.
    pub fn cached_tokens(&self) -> u64 {
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0);
        self.prompt_tokens
            .map_or(cached, |prompt| cached.min(prompt))
    }

    /// Prompt tokens written to the cache, 0 when not reported; never more than the prompt
    /// tokens left once the cached ones are taken out (OpenRouter's `prompt_tokens` holds
    /// the cached and the written ones), so that Anthropic's `input_tokens` (the prompt
    /// without either) is never negative.
    pub fn cache_write_tokens(&self) -> u64 {
        let written = self
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cache_write_tokens)
            .unwrap_or(0);
        self.prompt_tokens.map_or(written, |prompt| {
            written.min(prompt.saturating_sub(self.cached_tokens()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(usage: serde_json::Value) -> Usage {
        serde_json::from_value(usage).unwrap()
    }

    #[test]
    fn cache_writes_are_read_in_both_shapes_and_never_more_than_the_prompt_left() {
        // OpenRouter: in the details, beside the cached tokens.
        let u = read(json!({"prompt_tokens": 100,
            "prompt_tokens_details": {"cached_tokens": 20, "cache_write_tokens": 30}}));
        assert_eq!((u.cached_tokens(), u.cache_write_tokens()), (20, 30));
        // Anthropic-compatible endpoints: beside the counts.
        let u = read(
            json!({"prompt_tokens": 100, "cache_creation_input_tokens": 30,
            "prompt_tokens_details": {"cached_tokens": 20}}),
        );
        assert_eq!((u.cached_tokens(), u.cache_write_tokens()), (20, 30));
        let u = read(json!({"prompt_tokens": 100, "cache_creation_input_tokens": 30}));
        assert_eq!((u.cached_tokens(), u.cache_write_tokens()), (0, 30));
        // The details win over the same count beside them.
        let u = read(
            json!({"prompt_tokens": 100, "cache_creation_input_tokens": 5,
            "prompt_tokens_details": {"cache_write_tokens": 30}}),
        );
        assert_eq!(u.cache_write_tokens(), 30);
        // Garbage: more written than the prompt holds once the cached part is out, odd
        // types, counts past the bound. Nothing wraps.
        let u = read(json!({"prompt_tokens": 100,
            "prompt_tokens_details": {"cached_tokens": 90, "cache_write_tokens": 30}}));
        assert_eq!((u.cached_tokens(), u.cache_write_tokens()), (90, 10));
        let u = read(json!({"prompt_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 25, "cache_write_tokens": 30}}));
        assert_eq!((u.cached_tokens(), u.cache_write_tokens()), (10, 0));
        let u = read(
            json!({"prompt_tokens": 10, "cache_creation_input_tokens": -3,
            "prompt_tokens_details": {"cache_write_tokens": "x"}}),
        );
        assert_eq!(u.cache_write_tokens(), 0);
        let u = read(json!({"cache_creation_input_tokens": u64::MAX}));
        assert_eq!(u.cache_write_tokens(), 0);
        // Without a prompt count, the written one is all there is.
        let u = read(json!({"cache_creation_input_tokens": 7}));
        assert_eq!(u.cache_write_tokens(), 7);
    }
}
