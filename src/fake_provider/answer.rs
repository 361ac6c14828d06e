//! Answer synthesis: what a fake model "says".
//!
//! This part is API-neutral: the OpenAI, Anthropic and Gemini front ends extract a
//! [`Prompt`] and a [`GenRequest`] from their own wire format, call
//! [`generate`], and render the resulting [`Answer`] in their own wire format.
//!
//! The model "answers well" iff its ability is at least the prompt's
//! difficulty and the prompt does not contain one of the model's `fails_on`
//! substrings. Difficulty comes from an explicit `[difficulty=0.8]` marker in
//! the user text, or else from a stable hash of that text mapped into [0, 1).
//! Everything is deterministic: the same prompt to the same model always
//! produces the same answer.

use serde_json::{Map, Value, json};

use super::scenario::{BadAnswer, ModelConfig};

/// Marker carried by answers of the `wrong` bad-answer style, so tests and
/// offline evaluations can tell them apart from good answers.
pub const WRONG_MARKER: &str = "[fake:wrong]";

/// The refusal text used by the `refusal` bad-answer style.
pub const REFUSAL_TEXT: &str = "I'm sorry, but I can't help with that.";

/// The text of a request, as far as answer synthesis cares.
#[derive(Debug, Default, Clone)]
pub(crate) struct Prompt {
    /// All user-role text, joined by newlines.
    pub user_text: String,
    /// Number of characters of all message text (system included).
    pub total_chars: usize,
}

impl Prompt {
    /// Prompt tokens: ceil(chars / 4), at least 1.
    pub fn tokens(&self) -> u64 {
        (self.total_chars.div_ceil(4)).max(1) as u64
    }
}

/// The requested output format.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum OutputFormat {
    Text,
    JsonObject,
    /// A JSON schema the output should follow.
    JsonSchema(Value),
}

/// A tool the model is asked (forced) to call.
#[derive(Debug, Clone)]
pub(crate) struct ToolRequest {
    pub name: String,
    /// JSON schema of the tool's input.
    pub parameters: Value,
}

/// Everything [`generate`] needs.
#[derive(Debug)]
pub(crate) struct GenRequest<'a> {
    pub model: &'a str,
    pub config: &'a ModelConfig,
    pub prompt: &'a Prompt,
    pub format: OutputFormat,
    pub max_tokens: Option<u64>,
    pub stop: Vec<String>,
    pub tool: Option<ToolRequest>,
    /// Force a bad answer (the `bad` behaviour), with an optional style.
    pub force_bad: Option<Option<BadAnswer>>,
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Finish {
    Stop,
    Length,
    StopSequence(String),
    ToolUse,
}

/// A synthesized answer.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// The text content (empty for a tool call).
    pub text: String,
    /// `(name, arguments JSON)` when the answer is a tool call.
    pub tool_call: Option<(String, Value)>,
    pub finish: Finish,
    pub completion_tokens: u64,
    /// Whether this is a good answer (for stats).
    pub good: bool,
}

/// Parses a `[difficulty=0.8]` marker, else hashes the text into [0, 1).
pub(crate) fn difficulty(user_text: &str) -> f64 {
    const MARKER: &str = "[difficulty=";
    if let Some(start) = user_text.find(MARKER) {
        let rest = &user_text[start + MARKER.len()..];
        if let Some(end) = rest.find(']')
            && let Ok(d) = rest[..end].trim().parse::<f64>()
            && d.is_finite()
        {
            return d.clamp(0.0, 1.0);
        }
    }
    // FNV-1a's high bits are poorly mixed for short texts; a murmur3 finaliser spreads them, then
    // the top 53 bits give a uniform f64 in [0, 1).
    (fmix64(fnv1a(user_text.as_bytes())) >> 11) as f64 / (1u64 << 53) as f64
}

/// 64-bit FNV-1a: a stable hash (std's `DefaultHasher` is not guaranteed
/// stable across releases).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// MurmurHash3's 64-bit finaliser: every input bit affects every output bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// Whether `model` answers `prompt` well, ignoring forced behaviours.
pub(crate) fn answers_well(config: &ModelConfig, prompt: &Prompt) -> bool {
    let lower = prompt.user_text.to_lowercase();
    let blocked = config.fails_on.iter().any(|s| !s.is_empty() && lower.contains(&s.to_lowercase()));
    !blocked && config.ability >= difficulty(&prompt.user_text)
}

const VOCAB: &[&str] = &[
    "the",
    "result",
    "is",
    "consistent",
    "with",
    "a",
    "careful",
    "analysis",
    "of",
    "your",
    "question",
    "and",
    "it",
    "follows",
    "that",
    "each",
    "step",
    "holds",
    "so",
    "we",
    "conclude",
    "this",
    "approach",
    "works",
    "well",
    "in",
    "practice",
    "given",
    "these",
    "constraints",
    "overall",
    "clearly",
];

/// `n` words: "Answer from <model>: ..." followed by deterministic filler.
fn answer_words(model: &str, prompt: &Prompt, n: usize) -> Vec<String> {
    let seed = fnv1a(prompt.user_text.as_bytes()) as usize;
    let head = ["Answer".to_string(), "from".to_string(), format!("{model}:")];
    head.into_iter()
        .chain((0..).map(|i: usize| VOCAB[(seed.wrapping_add(i.wrapping_mul(7))) % VOCAB.len()].to_string()))
        .take(n)
        .collect()
}

fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

fn json_tokens(text: &str) -> u64 {
    text.len().div_ceil(4) as u64
}

/// Cuts `s` to at most `max` bytes on a char boundary.
fn cut_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Builds a value following (a practical subset of) a JSON schema.
pub(crate) fn value_for_schema(schema: &Value, text: &str, model: &str, depth: usize) -> Value {
    if depth > 8 {
        return Value::Null;
    }
    if let Some(first) = schema.get("enum").and_then(Value::as_array).and_then(|a| a.first()) {
        return first.clone();
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = schema.get(key).and_then(Value::as_array).and_then(|a| a.first()) {
            return value_for_schema(first, text, model, depth + 1);
        }
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        // ["string", "null"] style: take the first non-null type.
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    match ty {
        "object" => {
            let mut out = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, sub) in props {
                    let v = match (name.as_str(), sub.get("type").and_then(Value::as_str)) {
                        ("model", Some("string")) => Value::String(model.to_string()),
                        _ => value_for_schema(sub, text, model, depth + 1),
                    };
                    out.insert(name.clone(), v);
                }
            }
            Value::Object(out)
        }
        "array" => {
            let item = schema.get("items").cloned().unwrap_or(json!({"type": "string"}));
            Value::Array(vec![value_for_schema(&item, text, model, depth + 1)])
        }
        "integer" => json!(1),
        "number" => json!(0.5),
        "boolean" => json!(true),
        "null" => Value::Null,
        _ => Value::String(text.to_string()),
    }
}

/// Synthesizes the answer for one request.
pub(crate) fn generate(req: &GenRequest<'_>) -> Answer {
    let config = req.config;
    let good = req.force_bad.is_none() && answers_well(config, req.prompt);
    let style = match req.force_bad {
        Some(Some(style)) => style,
        _ => config.bad_answer,
    };

    if let Some(tool) = &req.tool {
        let args = match value_for_schema(&tool.parameters, "value", req.model, 0) {
            v @ Value::Object(_) => v,
            _ => Value::Object(Map::new()),
        };
        let tokens = json_tokens(&args.to_string()) + 5;
        return Answer {
            text: String::new(),
            tool_call: Some((tool.name.clone(), args)),
            finish: Finish::ToolUse,
            completion_tokens: tokens,
            good,
        };
    }

    let json_mode = req.format != OutputFormat::Text;
    let n = config.output_tokens;
    let good_text = answer_words(req.model, req.prompt, n).join(" ");
    let wrong_text = {
        let mut words = answer_words(req.model, req.prompt, n.saturating_sub(1));
        words.push(WRONG_MARKER.to_string());
        words.join(" ")
    };
    let as_json = |text: &str| -> String {
        let v = match &req.format {
            OutputFormat::JsonSchema(schema) => value_for_schema(schema, text, req.model, 0),
            _ => json!({"answer": text, "model": req.model}),
        };
        v.to_string()
    };

    let (mut text, mut finish) = if good {
        let t = if json_mode { as_json(&good_text) } else { good_text };
        (t, Finish::Stop)
    } else {
        match style {
            BadAnswer::Refusal => (REFUSAL_TEXT.to_string(), Finish::Stop),
            BadAnswer::Empty => (String::new(), Finish::Stop),
            BadAnswer::Wrong => {
                let t = if json_mode { as_json(&wrong_text) } else { wrong_text };
                (t, Finish::Stop)
            }
            BadAnswer::Truncated => {
                let t = if json_mode {
                    let full = as_json(&good_text);
                    cut_str(&full, full.len() / 2).to_string()
                } else {
                    answer_words(req.model, req.prompt, n / 2).join(" ")
                };
                (t, Finish::Length)
            }
        }
    };

    // Stop sequences end generation where they first appear (the sequence
    // itself is not part of the output).
    let first_stop = req
        .stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|pos| (pos, s)))
        .min_by_key(|(pos, _)| *pos);
    if let Some((pos, seq)) = first_stop {
        text.truncate(pos);
        finish = Finish::StopSequence(seq.clone());
    }

    // max_tokens truncation.
    if let Some(max) = req.max_tokens {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        if json_mode {
            if text.len().div_ceil(4) > max {
                text = cut_str(&text, max.saturating_mul(4)).to_string();
                finish = Finish::Length;
            }
        } else if text.split_whitespace().count() > max {
            text = text.split_whitespace().take(max).collect::<Vec<_>>().join(" ");
            finish = Finish::Length;
        }
    }

    let completion_tokens = if json_mode && good {
        json_tokens(&text)
    } else {
        count_words(&text)
    };
    Answer {
        text,
        tool_call: None,
        finish,
        completion_tokens,
        good,
    }
}

/// Splits content into stream pieces of a few words each; the pieces
/// concatenate back to exactly `text`.
pub(crate) fn stream_pieces(text: &str) -> Vec<String> {
    const WORDS_PER_PIECE: usize = 3;
    let mut pieces = Vec::new();
    let mut current = String::new();
    let mut words = 0;
    for part in text.split_inclusive(' ') {
        current.push_str(part);
        words += 1;
        if words == WORDS_PER_PIECE {
            pieces.push(std::mem::take(&mut current));
            words = 0;
        }
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_provider::Scenario;

    fn prompt(text: &str) -> Prompt {
        Prompt {
            user_text: text.to_string(),
            total_chars: text.chars().count(),
        }
    }

    fn req<'a>(config: &'a ModelConfig, prompt: &'a Prompt) -> GenRequest<'a> {
        GenRequest {
            model: "m",
            config,
            prompt,
            format: OutputFormat::Text,
            max_tokens: None,
            stop: vec![],
            tool: None,
            force_bad: None,
        }
    }

    #[test]
    fn difficulty_marker_and_hash() {
        assert_eq!(difficulty("hi [difficulty=0.8] there"), 0.8);
        assert_eq!(difficulty("[difficulty=7]"), 1.0);
        let d = difficulty("some prompt");
        assert!((0.0..1.0).contains(&d));
        assert_eq!(d, difficulty("some prompt"), "stable");
    }

    #[test]
    fn good_answer_has_requested_length() {
        let config = Scenario::default().config_for("m");
        let p = prompt("question");
        let a = generate(&req(&config, &p));
        assert!(a.good);
        assert!(a.text.starts_with("Answer from m: "));
        assert_eq!(a.completion_tokens, 24);
        assert_eq!(a.text.split_whitespace().count(), 24);
        assert_eq!(stream_pieces(&a.text).concat(), a.text);
    }

    #[test]
    fn max_tokens_and_stop_sequences() {
        let config = Scenario::default().config_for("m");
        let p = prompt("question");
        let mut r = req(&config, &p);
        r.max_tokens = Some(5);
        let a = generate(&r);
        assert_eq!(a.finish, Finish::Length);
        assert_eq!(a.completion_tokens, 5);
        r.max_tokens = None;
        r.stop = vec!["from".into()];
        let a = generate(&r);
        assert_eq!(a.text, "Answer ");
        assert_eq!(a.finish, Finish::StopSequence("from".into()));
    }

    #[test]
    fn json_schema_output_is_valid_json() {
        let config = Scenario::default().config_for("m");
        let p = prompt("question");
        let mut r = req(&config, &p);
        r.format = OutputFormat::JsonSchema(json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "n": {"type": "integer"},
                           "tags": {"type": "array", "items": {"type": "string"}}},
        }));
        let a = generate(&r);
        let v: Value = serde_json::from_str(&a.text).expect("valid JSON");
        assert_eq!(v["n"], 1);
        assert!(v["tags"].is_array());
    }

    #[test]
    fn bad_answers() {
        let mut config = Scenario::default().config_for("m");
        config.ability = 0.0;
        let p = prompt("[difficulty=0.5]");
        assert_eq!(generate(&req(&config, &p)).text, REFUSAL_TEXT);
        config.bad_answer = BadAnswer::Wrong;
        let a = generate(&req(&config, &p));
        assert!(!a.good && a.text.ends_with(WRONG_MARKER));
        config.bad_answer = BadAnswer::Truncated;
        assert_eq!(generate(&req(&config, &p)).finish, Finish::Length);
        config.ability = 1.0;
        config.fails_on = vec!["REGEX".into()];
        let p = prompt("write a regex for emails [difficulty=0.1]");
        assert!(!generate(&req(&config, &p)).good);
    }
}
