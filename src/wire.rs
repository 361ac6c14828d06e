//! OpenAI Chat Completions wire types: the lingua franca inside Ladder.
//!
//! Clients speak this format to Ladder; every provider adapter translates from it and back to it.
//! The types are strict where Ladder acts on a field (roles, content, limits, response format,
//! hints) and lenient everywhere else: unknown fields are kept in `extra` maps and passed through
//! to OpenAI-compatible upstreams untouched, so a new OpenAI parameter works before Ladder knows it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /v1/chat/completions` request body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Ladder's own routing hints; never forwarded upstream.
    #[serde(default, skip_serializing)]
    pub ladder: Option<LadderHints>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `response_format`: `{"type":"text"|"json_object"|"json_schema", "json_schema": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ResponseFormat {
    pub fn wants_json(&self) -> bool {
        self.kind == "json_object" || self.kind == "json_schema"
    }
}

/// The `ladder` body field: per-request routing hints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LadderHints {
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    #[serde(default)]
    pub min_quality: Option<f64>,
    #[serde(default)]
    pub models: Option<Vec<String>>,
}

/// One chat message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

/// Message content: a string, or an array of typed parts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Content {
    /// The text of the content (text parts joined by newlines).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Content::Text(s) => std::borrow::Cow::Borrowed(s),
            Content::Parts(parts) => {
                let texts: Vec<&str> = parts.iter().filter_map(|p| p.text.as_deref()).collect();
                std::borrow::Cow::Owned(texts.join("\n"))
            }
        }
    }

    pub fn has_image(&self) -> bool {
        matches!(self, Content::Parts(parts) if parts.iter().any(|p| p.kind == "image_url" || p.kind == "image"))
    }
}

impl Message {
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match &self.content {
            Some(c) => c.text(),
            None => std::borrow::Cow::Borrowed(""),
        }
    }
}

impl ChatRequest {
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// The caller's output limit, whichever of the two spellings was used.
    pub fn max_output_tokens(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    pub fn wants_json(&self) -> bool {
        self.response_format.as_ref().is_some_and(|f| f.wants_json())
    }

    pub fn has_image(&self) -> bool {
        self.messages.iter().any(|m| m.content.as_ref().is_some_and(|c| c.has_image()))
    }

    /// All message text, for token estimates and prompt logging.
    pub fn all_text_len(&self) -> usize {
        self.messages.iter().map(|m| m.text().len()).sum()
    }

    /// The system prompt(s) and the last user turn: what the classifier reads.
    pub fn routing_text(&self) -> RoutingText {
        let system: Vec<String> = self
            .messages
            .iter()
            .filter(|m| matches!(m.role, Role::System | Role::Developer))
            .map(|m| m.text().into_owned())
            .collect();
        let last_user = self
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.text().into_owned())
            .unwrap_or_default();
        RoutingText {
            system: head_and_tail(system.join("\n")),
            last_user: head_and_tail(last_user),
        }
    }

    /// The whole conversation as one string, for logging.
    pub fn transcript(&self) -> String {
        let mut out = String::with_capacity(self.all_text_len() + 16 * self.messages.len());
        for m in &self.messages {
            out.push_str(role_name(m.role));
            out.push_str(": ");
            out.push_str(&m.text());
            out.push('\n');
        }
        out
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::Developer => "developer",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
        Role::Function => "function",
    }
}

/// The classifier reads at most 256 tokens of a prompt (the head of the system prompt, the head
/// and tail of the user turn), so longer texts are cut to their first and last bytes before
/// tokenizing: a 4 MB prompt must not hold an inference thread for seconds.
const ROUTING_HEAD_BYTES: usize = 16 * 1024;
const ROUTING_TAIL_BYTES: usize = 8 * 1024;

/// `s` itself, or its first [`ROUTING_HEAD_BYTES`] and last [`ROUTING_TAIL_BYTES`] (at character
/// boundaries) joined by a newline.
fn head_and_tail(s: String) -> String {
    if s.len() <= ROUTING_HEAD_BYTES + ROUTING_TAIL_BYTES {
        return s;
    }
    let mut h = ROUTING_HEAD_BYTES;
    while !s.is_char_boundary(h) {
        h -= 1;
    }
    let mut t = s.len() - ROUTING_TAIL_BYTES;
    while !s.is_char_boundary(t) {
        t += 1;
    }
    format!("{}\n{}", &s[..h], &s[t..])
}

/// The parts of a request the classifier scores.
#[derive(Debug, Clone, Default)]
pub struct RoutingText {
    pub system: String,
    pub last_user: String,
}

/// Rough token count for context-window checks: ~4 characters per token, as OpenAI documents for
/// English text, plus a few tokens of framing per message.
pub fn estimate_tokens(req: &ChatRequest) -> u64 {
    let chars: usize = req.messages.iter().map(|m| m.text().chars().count()).sum();
    (chars as u64).div_ceil(4) + 4 * req.messages.len() as u64
}

/// Non-streaming response body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub id: String,
    #[serde(default = "completion_object")]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn completion_object() -> String {
    "chat.completion".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Choice {
    #[serde(default)]
    pub index: u32,
    pub message: ResponseMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseMessage {
    #[serde(default = "assistant_role")]
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn assistant_role() -> String {
    "assistant".to_string()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// One streamed chunk (`chat.completion.chunk`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatChunk {
    pub id: String,
    #[serde(default = "chunk_object")]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    pub model: String,
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn chunk_object() -> String {
    "chat.completion.chunk".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkChoice {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatChunk {
    /// True when the chunk carries something a client would see as output.
    pub fn has_output(&self) -> bool {
        self.choices
            .iter()
            .any(|c| c.delta.content.as_deref().is_some_and(|s| !s.is_empty()) || c.delta.tool_calls.is_some())
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_text_of_a_huge_prompt_keeps_its_head_and_tail() {
        let user = format!("HEAD {} TAIL", "é".repeat(2_000_000));
        let req: ChatRequest =
            serde_json::from_value(serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": user}]})).unwrap();
        let t = req.routing_text();
        assert!(t.last_user.len() <= ROUTING_HEAD_BYTES + ROUTING_TAIL_BYTES + 1);
        assert!(t.last_user.starts_with("HEAD é") && t.last_user.ends_with("é TAIL"));
        assert_eq!(head_and_tail("short".into()), "short");
    }

    #[test]
    fn parses_string_and_array_content_and_keeps_unknown_fields() {
        let body = r#"{"model":"auto","messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hello"},{"type":"image_url","image_url":{"url":"data:x"}}]}],
            "seed": 7, "stream_options": {"include_usage": true}, "ladder": {"task": "chat"}}"#;
        let req: ChatRequest = serde_json::from_str(body).unwrap();
        assert_eq!(req.messages.len(), 2);
        assert!(req.has_image());
        assert_eq!(req.routing_text().last_user, "hello");
        assert_eq!(req.extra.get("seed"), Some(&Value::from(7)));
        let out = serde_json::to_value(&req).unwrap();
        assert!(out.get("ladder").is_none(), "hints must not be forwarded");
        assert_eq!(out["seed"], 7);
        assert_eq!(out["messages"][1]["content"][1]["image_url"]["url"], "data:x");
    }

    #[test]
    fn rejects_bad_roles_and_negative_limits() {
        assert!(serde_json::from_str::<ChatRequest>(r#"{"model":"a","messages":[{"role":"robot","content":"x"}]}"#).is_err());
        assert!(serde_json::from_str::<ChatRequest>(r#"{"model":"a","messages":[],"max_tokens":-1}"#).is_err());
        assert!(serde_json::from_str::<ChatRequest>(r#"{"model":"a","messages":[],"ladder":{"tsk":"x"}}"#).is_err());
    }
}
