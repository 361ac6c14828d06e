//! Adapter for the Anthropic Messages API (`POST /v1/messages`).
//!
//! Translation, request side: system/developer messages become the top-level `system`; user and
//! assistant turns become content blocks (text, images from data: or https URLs, `tool_use` from
//! assistant `tool_calls`, `tool_result` from `tool` messages), consecutive same-role turns are
//! merged; `max_tokens` (required by Anthropic) comes from the request, else the model's limit,
//! else 4096; OpenAI `temperature` (0..2) is clamped to Anthropic's 0..1; `stop` becomes
//! `stop_sequences`; tools and `tool_choice` are mapped; `response_format` JSON, which Anthropic
//! lacks, becomes a system instruction (and Ladder's JSON check verifies the result).
//!
//! Response side: text blocks join into `content`, `tool_use` blocks into `tool_calls`,
//! `stop_reason` maps to `finish_reason`, and the SSE events (`message_start`,
//! `content_block_delta`, `message_delta`, `message_stop`, `error`, `ping`) become
//! `chat.completion.chunk`s. A stream that ends before `message_stop` is an error.

use super::sse::{SseEvent, SseTranslator};
use super::{ChunkStream, ProviderError, classify_reqwest, expect_content_type, read_body_limited, status_error};
use crate::config::ModelConfig;
use crate::wire::{ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Content, Delta, ResponseMessage, Role, Usage, unix_now};
use serde_json::{Map, Value, json};
use std::collections::VecDeque;

pub const ANTHROPIC_VERSION: &str = "2023-06-01";

#[derive(Clone)]
pub struct AnthropicProvider {
    url: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl AnthropicProvider {
    pub fn new(base_url: String, api_key: Option<String>, http: reqwest::Client) -> Self {
        AnthropicProvider {
            url: format!("{base_url}/messages"),
            api_key,
            http,
        }
    }

    pub(crate) fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    async fn send(&self, body: &Value) -> Result<reqwest::Response, ProviderError> {
        let mut rb = self.http.post(&self.url).header("anthropic-version", ANTHROPIC_VERSION).json(body);
        if let Some(key) = &self.api_key {
            rb = rb.header("x-api-key", key);
        }
        let resp = rb.send().await.map_err(|e| classify_reqwest(&e))?;
        if !resp.status().is_success() {
            return Err(status_error(resp).await);
        }
        Ok(resp)
    }

    pub async fn complete(&self, req: &ChatRequest, model: &ModelConfig) -> Result<ChatCompletion, ProviderError> {
        let resp = self.send(&translate_request(req, model, false)).await?;
        expect_content_type(&resp, "application/json")?;
        let bytes = read_body_limited(resp, super::MAX_RESPONSE_BYTES).await?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| ProviderError::Malformed(format!("invalid message JSON: {e}")))?;
        translate_response(&v, &model.name)
    }

    pub async fn stream(&self, req: &ChatRequest, model: &ModelConfig) -> Result<ChunkStream, ProviderError> {
        let resp = self.send(&translate_request(req, model, true)).await?;
        expect_content_type(&resp, "text/event-stream")?;
        Ok(event_stream(resp, model.name.clone()))
    }
}

/// OpenAI request -> Anthropic Messages request.
pub fn translate_request(req: &ChatRequest, model: &ModelConfig, stream: bool) -> Value {
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<(String, Vec<Value>)> = Vec::new();
    for m in &req.messages {
        let (role, blocks) = match m.role {
            Role::System | Role::Developer => {
                system.push(m.text().into_owned());
                continue;
            }
            Role::User => ("user", content_blocks(m.content.as_ref())),
            Role::Assistant => {
                let mut blocks = content_blocks(m.content.as_ref());
                for call in m.tool_calls.iter().flatten() {
                    let args = call.pointer("/function/arguments").and_then(|a| a.as_str()).unwrap_or("{}");
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call.get("id").cloned().unwrap_or(Value::Null),
                        "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
                        "input": serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({})),
                    }));
                }
                ("assistant", blocks)
            }
            Role::Tool | Role::Function => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id.clone().or_else(|| m.name.clone()).unwrap_or_default(),
                    "content": m.text(),
                })],
            ),
        };
        if blocks.is_empty() {
            continue;
        }
        match messages.last_mut() {
            Some((last_role, last_blocks)) if last_role == role => last_blocks.extend(blocks),
            _ => messages.push((role.to_string(), blocks)),
        }
    }
    if req.wants_json() {
        system.push("Respond with a single valid JSON object and nothing else.".into());
    }
    let max_tokens = req.max_output_tokens().or(model.max_output_tokens).unwrap_or(4096);
    let mut body = Map::new();
    body.insert("model".into(), json!(model.upstream_id()));
    body.insert("max_tokens".into(), json!(max_tokens));
    body.insert(
        "messages".into(),
        Value::Array(
            messages
                .into_iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect(),
        ),
    );
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), json!(p));
    }
    match &req.stop {
        Some(Value::String(s)) => {
            body.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(a)) => {
            body.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        _ => {}
    }
    if let Some(tools) = &req.tools {
        let mapped: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.get("function"))
            .map(|f| {
                json!({
                    "name": f.get("name").cloned().unwrap_or(Value::Null),
                    "description": f.get("description").cloned().unwrap_or(json!("")),
                    "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"})),
                })
            })
            .collect();
        body.insert("tools".into(), Value::Array(mapped));
    }
    if let Some(choice) = &req.tool_choice {
        let mapped = match choice {
            Value::String(s) if s == "required" => Some(json!({"type": "any"})),
            Value::String(s) if s == "none" => Some(json!({"type": "none"})),
            Value::String(_) => Some(json!({"type": "auto"})),
            Value::Object(_) => choice.pointer("/function/name").map(|n| json!({"type": "tool", "name": n})),
            _ => None,
        };
        if let Some(m) = mapped {
            body.insert("tool_choice".into(), m);
        }
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Value::Object(body)
}

fn content_blocks(content: Option<&Content>) -> Vec<Value> {
    match content {
        None => Vec::new(),
        Some(Content::Text(s)) if s.is_empty() => Vec::new(),
        Some(Content::Text(s)) => vec![json!({"type": "text", "text": s})],
        Some(Content::Parts(parts)) => parts
            .iter()
            .filter_map(|p| match p.kind.as_str() {
                "text" => p
                    .text
                    .as_ref()
                    .filter(|t| !t.is_empty())
                    .map(|t| json!({"type": "text", "text": t})),
                "image_url" => {
                    let url = p.extra.get("image_url").and_then(|u| u.get("url")).and_then(|u| u.as_str())?;
                    Some(image_block(url))
                }
                _ => None,
            })
            .collect(),
    }
}

fn image_block(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((meta, data)) = rest.split_once(',')
    {
        let media_type = meta.trim_end_matches(";base64");
        return json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}});
    }
    json!({"type": "image", "source": {"type": "url", "url": url}})
}

pub fn finish_reason(stop_reason: Option<&str>) -> Option<String> {
    stop_reason.map(|r| {
        match r {
            "max_tokens" => "length",
            "tool_use" => "tool_calls",
            "refusal" => "content_filter",
            _ => "stop",
        }
        .to_string()
    })
}

/// Anthropic message -> OpenAI chat.completion.
pub fn translate_response(v: &Value, model_name: &str) -> Result<ChatCompletion, ProviderError> {
    let blocks = v
        .get("content")
        .and_then(|c| c.as_array())
        .ok_or_else(|| ProviderError::Malformed("message has no content array".into()))?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(|t| t.as_str()) {
            Some("text") => text.push_str(b.get("text").and_then(|t| t.as_str()).unwrap_or("")),
            Some("tool_use") => tool_calls.push(json!({
                "id": b.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": b.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": b.get("input").map(|i| i.to_string()).unwrap_or_else(|| "{}".into()),
                },
            })),
            _ => {}
        }
    }
    let usage = v.get("usage").map(|u| {
        Usage::new(
            u.get("input_tokens").and_then(|n| n.as_u64()).unwrap_or(0),
            u.get("output_tokens").and_then(|n| n.as_u64()).unwrap_or(0),
        )
    });
    Ok(ChatCompletion {
        id: v
            .get("id")
            .and_then(|i| i.as_str())
            .map(|s| format!("chatcmpl-{s}"))
            .unwrap_or_else(|| "chatcmpl-anthropic".into()),
        object: "chat.completion".into(),
        created: unix_now(),
        model: model_name.to_string(),
        choices: vec![Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant".into(),
                content: Some(text),
                tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
                extra: Map::new(),
            },
            finish_reason: finish_reason(v.get("stop_reason").and_then(|s| s.as_str())),
            extra: Map::new(),
        }],
        usage,
        extra: Map::new(),
    })
}

/// Translation state of one Anthropic stream.
struct StreamState {
    ready: VecDeque<Result<ChatChunk, ProviderError>>,
    done: bool,
    id: String,
    model: String,
    input_tokens: u64,
    /// Anthropic content-block index -> OpenAI tool_calls index.
    tool_index: std::collections::HashMap<u64, usize>,
}

impl StreamState {
    fn chunk(&self, delta: Delta, finish_reason: Option<String>, usage: Option<Usage>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: unix_now(),
            model: self.model.clone(),
            choices: if usage.is_some() && finish_reason.is_none() && delta.content.is_none() {
                Vec::new()
            } else {
                vec![ChunkChoice {
                    index: 0,
                    delta,
                    finish_reason,
                    extra: Map::new(),
                }]
            },
            usage,
            extra: Map::new(),
        }
    }

    /// Translate one Anthropic event; pushes chunks (or an error) onto `ready`.
    fn on_event(&mut self, name: Option<&str>, data: &str) {
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                self.ready
                    .push_back(Err(ProviderError::Malformed(format!("invalid event JSON: {e}"))));
                return;
            }
        };
        let kind = name.or_else(|| v.get("type").and_then(|t| t.as_str())).unwrap_or("").to_string();
        match kind.as_str() {
            "message_start" => {
                if let Some(id) = v.pointer("/message/id").and_then(|i| i.as_str()) {
                    self.id = format!("chatcmpl-{id}");
                }
                self.input_tokens = v.pointer("/message/usage/input_tokens").and_then(|n| n.as_u64()).unwrap_or(0);
                let delta = Delta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                    ..Default::default()
                };
                let c = self.chunk(delta, None, None);
                self.ready.push_back(Ok(c));
            }
            "content_block_start" if v.pointer("/content_block/type").and_then(|t| t.as_str()) == Some("tool_use") => {
                let block_index = v.get("index").and_then(|i| i.as_u64()).unwrap_or(0);
                let idx = self.tool_index.len();
                self.tool_index.insert(block_index, idx);
                let call = json!({
                    "index": idx,
                    "id": v.pointer("/content_block/id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {"name": v.pointer("/content_block/name").cloned().unwrap_or(Value::Null), "arguments": ""},
                });
                let c = self.chunk(
                    Delta {
                        tool_calls: Some(vec![call]),
                        ..Default::default()
                    },
                    None,
                    None,
                );
                self.ready.push_back(Ok(c));
            }
            "content_block_delta" => match v.pointer("/delta/type").and_then(|t| t.as_str()) {
                Some("text_delta") => {
                    let text = v.pointer("/delta/text").and_then(|t| t.as_str()).unwrap_or("").to_string();
                    let c = self.chunk(
                        Delta {
                            content: Some(text),
                            ..Default::default()
                        },
                        None,
                        None,
                    );
                    self.ready.push_back(Ok(c));
                }
                Some("input_json_delta") => {
                    let block_index = v.get("index").and_then(|i| i.as_u64()).unwrap_or(0);
                    let idx = self.tool_index.get(&block_index).copied().unwrap_or(0);
                    let part = v.pointer("/delta/partial_json").cloned().unwrap_or(json!(""));
                    let call = json!({"index": idx, "function": {"arguments": part}});
                    let c = self.chunk(
                        Delta {
                            tool_calls: Some(vec![call]),
                            ..Default::default()
                        },
                        None,
                        None,
                    );
                    self.ready.push_back(Ok(c));
                }
                _ => {}
            },
            "message_delta" => {
                let output_tokens = v.pointer("/usage/output_tokens").and_then(|n| n.as_u64()).unwrap_or(0);
                let reason = finish_reason(v.pointer("/delta/stop_reason").and_then(|s| s.as_str()));
                let finish = self.chunk(Delta::default(), reason.or_else(|| Some("stop".into())), None);
                self.ready.push_back(Ok(finish));
                let usage = self.chunk(Delta::default(), None, Some(Usage::new(self.input_tokens, output_tokens)));
                self.ready.push_back(Ok(usage));
            }
            "message_stop" => self.done = true,
            "error" => {
                let msg = v
                    .pointer("/error/message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("unknown error")
                    .to_string();
                self.ready
                    .push_back(Err(ProviderError::Stream(format!("upstream error event: {msg}"))));
            }
            _ => {} // ping, content_block_stop, and event types added later
        }
    }
}

impl SseTranslator for StreamState {
    const TERMINATOR: &'static str = "message_stop";

    fn on_event(&mut self, ev: &SseEvent, out: &mut VecDeque<Result<ChatChunk, ProviderError>>) -> bool {
        StreamState::on_event(self, ev.event.as_deref(), &ev.data);
        out.append(&mut self.ready);
        self.done
    }
}

/// Translate a whole Messages SSE body, given as the chunks it arrived in, without a network
/// (tests and fuzzing; same state machine as a live stream).
pub fn translate_sse_chunks(chunks: &[&[u8]], model: &str) -> Vec<Result<ChatChunk, ProviderError>> {
    let state = StreamState {
        ready: VecDeque::new(),
        done: false,
        id: "chatcmpl-anthropic".into(),
        model: model.to_string(),
        input_tokens: 0,
        tool_index: Default::default(),
    };
    super::offline::drive(chunks, state)
}

fn event_stream(resp: reqwest::Response, model: String) -> ChunkStream {
    let state = StreamState {
        ready: VecDeque::new(),
        done: false,
        id: "chatcmpl-anthropic".into(),
        model,
        input_tokens: 0,
        tool_index: Default::default(),
    };
    super::sse::translate(resp, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelConfig {
        toml::from_str(
            r#"name = "claude"
            provider = "a"
            upstream = "claude-x"
            input_price = 1.0
            output_price = 5.0
            context_window = 200000
            quality = { default = 0.9 }"#,
        )
        .unwrap()
    }

    #[test]
    fn request_translation() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "claude",
            "messages": [
                {"role": "system", "content": "be terse"},
                {"role": "user", "content": "hi"},
                {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "42"}
            ],
            "temperature": 1.7,
            "stop": "END",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "required"
        }))
        .unwrap();
        let body = translate_request(&req, &model(), false);
        assert_eq!(body["model"], "claude-x");
        assert_eq!(body["system"], "be terse");
        assert_eq!(body["max_tokens"], 4096);
        assert_eq!(body["temperature"], 1.0);
        assert_eq!(body["stop_sequences"], json!(["END"]));
        let msgs = body["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3, "two user turns merged: {msgs:?}");
        assert_eq!(msgs[0]["content"][2]["source"]["media_type"], "image/png");
        assert_eq!(msgs[1]["content"][0]["type"], "tool_use");
        assert_eq!(msgs[1]["content"][0]["input"]["x"], 1);
        assert_eq!(msgs[2]["content"][0]["tool_use_id"], "t1");
        assert_eq!(body["tools"][0]["input_schema"]["type"], "object");
        assert_eq!(body["tool_choice"]["type"], "any");
    }

    #[test]
    fn response_translation() {
        let v = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "hello"}, {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}],
            "stop_reason": "max_tokens", "usage": {"input_tokens": 5, "output_tokens": 7}});
        let c = translate_response(&v, "claude").unwrap();
        assert_eq!(c.choices[0].message.content.as_deref(), Some("hello"));
        assert_eq!(c.choices[0].finish_reason.as_deref(), Some("length"));
        assert_eq!(c.usage, Some(Usage::new(5, 7)));
        assert_eq!(
            c.choices[0].message.tool_calls.as_ref().unwrap()[0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert!(translate_response(&json!({"id": "x"}), "claude").is_err());
    }
}
