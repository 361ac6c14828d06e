//! The fuzz targets' bodies, shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) and by
//! the stable randomized tests that run in CI (`tests/randomized.rs`). Each takes arbitrary bytes,
//! must not panic, and checks what it can:
//!
//! - `chat_request`: `POST /v1/chat/completions` parsing and validation (the server's own
//!   `parse`), then routing, logging helpers and the upstream translations of what it accepts
//!   (a Gemini request must also be one Gemini takes: contents, roles, no empty parts).
//! - `hints`: the `x-ladder-task` header and the `ladder` body field.
//! - `sse`: the SSE parser; any split of the bytes into network chunks gives the same events.
//! - `anthropic_response`: Messages API response JSON to an OpenAI completion.
//! - `stream_translation`: OpenAI and Anthropic SSE bodies to OpenAI chunks, chunking-independent.
//! - `gemini_response`: Gemini `GenerateContentResponse` JSON to an OpenAI completion.
//! - `gemini_stream`: Gemini SSE bodies to OpenAI chunks, chunking-independent, with unique tool
//!   call ids and every chunk after the first error absent.

#![allow(dead_code)]

use axum::http::{HeaderMap, HeaderValue};
use ladder::config::Config;
use ladder::providers::sse::SseParser;
use ladder::providers::{anthropic, gemini, openai};
use ladder::router::{self, ScoreSource, Scores};
use ladder::server::{AppState, SharedState};
use ladder::task::Task;
use serde_json::Value;
use std::sync::{Arc, OnceLock};

/// A fuzz target: a name and the function that takes one input.
pub type Target = (&'static str, fn(&[u8]));

pub const TARGETS: &[Target] = &[
    ("chat_request", chat_request),
    ("hints", hints),
    ("sse", sse),
    ("anthropic_response", anthropic_response),
    ("stream_translation", stream_translation),
    ("gemini_response", gemini_response),
    ("gemini_stream", gemini_stream),
];

const CONFIG: &str = r#"
[store]
path = "{STORE}"
[classifier]
enabled = false
[auth]
enabled = false
[[providers]]
name = "o"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
[[providers]]
name = "a"
kind = "anthropic"
base_url = "http://127.0.0.1:9/v1"
[[providers]]
name = "g"
kind = "gemini"
[[models]]
name = "small"
provider = "o"
input_price = 0.1
output_price = 0.2
context_window = 4000
capabilities = ["json"]
quality = { default = 0.7, math = 0.3 }
[[models]]
name = "claude"
provider = "a"
input_price = 1.0
output_price = 5.0
context_window = 100000
max_output_tokens = 8000
capabilities = ["tools", "vision"]
quality = { default = 0.9 }
fallbacks = ["small"]
[[models]]
name = "gem"
provider = "g"
input_price = 0.3
output_price = 2.5
context_window = 1000000
capabilities = ["tools", "vision", "json"]
quality = { default = 0.85 }
"#;

fn state() -> &'static SharedState {
    static STATE: OnceLock<SharedState> = OnceLock::new();
    STATE.get_or_init(|| {
        let store = std::env::temp_dir().join(format!("ladder-fuzz-{}.db", std::process::id()));
        let config = Config::from_toml(&CONFIG.replace("{STORE}", &store.display().to_string())).expect("fuzz config");
        Arc::new(AppState::build(config).expect("fuzz state"))
    })
}

/// Parse like the server does; check what an accepted request leads to.
fn parse_and_follow(headers: &HeaderMap, body: &[u8]) {
    let state = state();
    let parsed = match ladder::server::chat::parse(state, headers, body) {
        Ok(p) => p,
        Err(e) => {
            assert!(e.status.is_client_error(), "parse error with status {}: {}", e.status, e.message);
            assert!(!e.message.is_empty());
            return;
        }
    };
    let _ = parsed.req.transcript();
    let _ = parsed.req.routing_text();
    let _ = ladder::wire::estimate_tokens(&parsed.req);
    let scores = Scores::for_task(parsed.route.task_hint.unwrap_or(Task::Chat), ScoreSource::Hint);
    if let Ok(d) = router::decide(&state.config, &parsed.route, &scores) {
        assert!(!d.chain.is_empty(), "a decision with an empty chain");
        for m in &d.chain {
            assert!(state.config.model(m).is_some(), "chain names unknown model {m}");
            if let Some(allowed) = &parsed.route.allowed_models {
                assert!(allowed.contains(m), "chain model {m} outside the allow-list {allowed:?}");
            }
        }
    }
    for m in &state.config.models {
        let _ = anthropic::translate_request(&parsed.req, m, false);
        let _ = anthropic::translate_request(&parsed.req, m, true);
    }
    if let Ok(body) = gemini::translate_request(&parsed.req, None) {
        check_gemini_request(&body);
    }
    serde_json::to_vec(&parsed.req).expect("an accepted request re-serialises");
}

/// What the Gemini API insists on: at least one content, roles `user`/`model`, every part with
/// exactly one data field and no empty text.
fn check_gemini_request(body: &Value) {
    let contents = body["contents"].as_array().expect("contents is an array");
    assert!(!contents.is_empty(), "empty contents: {body}");
    let system = body.get("systemInstruction").map(std::slice::from_ref).unwrap_or_default();
    for c in contents.iter().chain(system) {
        if c.get("role").is_some() {
            assert!(c["role"] == "user" || c["role"] == "model", "role: {c}");
        }
        let parts = c["parts"].as_array().expect("parts is an array");
        assert!(!parts.is_empty(), "a content without parts: {body}");
        for p in parts {
            let data = ["text", "inlineData", "fileData", "functionCall", "functionResponse"]
                .iter()
                .filter(|k| p.get(**k).is_some())
                .count();
            assert_eq!(data, 1, "a part needs exactly one data field: {p}");
            if let Some(t) = p.get("text") {
                assert!(t.as_str().is_some_and(|t| !t.is_empty()), "empty text part: {p}");
            }
            for call in ["functionCall", "functionResponse"] {
                if let Some(c) = p.get(call) {
                    assert!(c["name"].as_str().is_some_and(|n| !n.is_empty()), "{call} without a name: {p}");
                }
            }
        }
    }
}

pub fn chat_request(data: &[u8]) {
    parse_and_follow(&HeaderMap::new(), data);
}

/// First line: the `x-ladder-task` header; the rest: the `ladder` body field.
pub fn hints(data: &[u8]) {
    let (head, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let mut headers = HeaderMap::new();
    if !head.is_empty()
        && let Ok(v) = HeaderValue::from_bytes(head)
    {
        headers.insert("x-ladder-task", v);
    }
    let mut body = br#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"ladder":"#.to_vec();
    body.extend_from_slice(rest);
    body.push(b'}');
    parse_and_follow(&headers, &body);
}

/// Chunk boundaries derived from the data itself (deterministic).
fn split_points(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut k = data.first().copied().unwrap_or(7) as usize;
    while i < data.len() {
        k = (k * 31 + 7) % 13 + 1;
        let end = (i + k).min(data.len());
        out.push(&data[i..end]);
        i = end;
    }
    out
}

pub fn sse(data: &[u8]) {
    let mut whole = SseParser::new();
    let all = whole.push(data);
    let mut split = SseParser::new();
    let mut pieces = Vec::new();
    for chunk in split_points(data) {
        pieces.extend(split.push(chunk));
    }
    assert_eq!(all, pieces, "chunking changed the events");
    assert_eq!(whole.has_partial(), split.has_partial());
}

pub fn anthropic_response(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
    if let Ok(c) = anthropic::translate_response(&v, "claude") {
        serde_json::to_vec(&c).expect("a translated completion serialises");
    }
}

/// Chunks as comparable JSON (the `created` timestamp removed), errors as text.
fn normalise(items: Vec<Result<ladder::wire::ChatChunk, ladder::providers::ProviderError>>) -> Vec<Result<Value, String>> {
    items
        .into_iter()
        .map(|r| match r {
            Ok(c) => {
                let mut v = serde_json::to_value(&c).expect("a chunk serialises");
                if let Some(o) = v.as_object_mut() {
                    o.remove("created");
                }
                Ok(v)
            }
            Err(e) => Err(e.to_string()),
        })
        .collect()
}

/// First byte: which API; the rest: an SSE body.
pub fn stream_translation(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    let run = |chunks: &[&[u8]]| {
        if which % 2 == 0 {
            openai::translate_sse_chunks(chunks)
        } else {
            anthropic::translate_sse_chunks(chunks, "claude")
        }
    };
    // (An empty result is fine: a body that is just the terminator is an empty stream, which
    // the executor's empty-content check handles.)
    let whole = run(&[body]);
    let split = run(&split_points(body));
    assert_eq!(normalise(whole), normalise(split), "chunking changed the translation");
}

pub fn gemini_response(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(data) else { return };
    if let Ok(c) = gemini::translate_response(&v, "gem") {
        assert!(!c.choices.is_empty(), "a completion without choices");
        for choice in &c.choices {
            for call in choice.message.tool_calls.iter().flatten() {
                let args = call["function"]["arguments"].as_str().expect("arguments are a string");
                assert!(
                    serde_json::from_str::<Value>(args).is_ok_and(|a| a.is_object()),
                    "arguments: {args}"
                );
            }
        }
        serde_json::to_vec(&c).expect("a translated completion serialises");
    }
}

/// A Gemini SSE body: chunking-independent, nothing after an error, unique tool call ids.
pub fn gemini_stream(data: &[u8]) {
    let whole = gemini::translate_sse_chunks(&[data], "gem");
    if let Some(i) = whole.iter().position(Result::is_err) {
        assert_eq!(i + 1, whole.len(), "chunks after an error");
    }
    let mut ids = std::collections::HashSet::new();
    for chunk in whole.iter().flatten() {
        for choice in &chunk.choices {
            for call in choice.delta.tool_calls.iter().flatten() {
                let id = call["id"].as_str().expect("a streamed tool call has an id");
                assert!(ids.insert(id.to_string()), "tool call id {id} repeated");
            }
        }
    }
    let split = gemini::translate_sse_chunks(&split_points(data), "gem");
    assert_eq!(normalise(whole), normalise(split), "chunking changed the translation");
}
