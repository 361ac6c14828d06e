//! Adapter for the Google Gemini API (`POST {base}/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`, key in `x-goog-api-key`).
//!
//! Translation, request side:
//! - system/developer messages become `systemInstruction` (one text part each); a request with
//!   nothing but system messages sends them as the user turn instead (Gemini needs `contents`);
//! - user turns become `contents` with role `user`, assistant turns role `model`; consecutive
//!   same-role turns are merged; empty text is never sent (Gemini rejects empty parts);
//! - content parts: text; `image_url` with a `data:` URL becomes `inlineData`, with an `https://`
//!   or `gs://` URL `fileData` (Gemini fetches it) when the file extension gives the MIME type,
//!   which Gemini requires; other URLs (plain `http://`, no recognisable extension) cannot be
//!   expressed and fail the attempt as [`ProviderError::Unsupported`], so the next rung gets
//!   the request. `input_audio` and `file` parts with inline data become `inlineData` too;
//! - assistant `tool_calls` become `functionCall` parts (arguments parsed into the `args`
//!   object), `tool` messages `functionResponse` parts of a user turn; the function name comes
//!   from the matching call (OpenAI tool results carry only the call id); a tool result that
//!   is a JSON object is the response itself, anything else is wrapped as `{"result": text}`;
//! - Gemini's thinking models sign their function calls (`thoughtSignature`) and reject a
//!   replayed call without its signature. OpenAI clients cannot carry it, so the adapter keeps
//!   the signatures of the calls it handed out (bounded, in memory) keyed by the tool call id
//!   it generated, and puts them back; a call it did not hand out (another model made it, or
//!   the process restarted) gets Google's documented `skip_thought_signature_validator` on the
//!   first call of its turn. Tool call ids stay short and `[A-Za-z0-9_]`, so a conversation can
//!   move on to an OpenAI or Anthropic rung;
//! - `temperature`, `top_p`, `max_completion_tokens`/`max_tokens`, `stop`, `n`, `seed`,
//!   `presence_penalty`, `frequency_penalty` go into `generationConfig`; `response_format`
//!   `json_object` sets `responseMimeType: application/json`, `json_schema` also passes its
//!   schema as `responseJsonSchema` (JSON Schema as is; `responseSchema` is an OpenAPI subset
//!   that rejects e.g. `additionalProperties`);
//! - `tools` become one `functionDeclarations` tool, with `parameters` passed as
//!   `parametersJsonSchema` for the same reason; `tool_choice` none/auto/required/a named
//!   function becomes `toolConfig.functionCallingConfig` mode `NONE`/`AUTO`/`ANY`/`ANY` with
//!   `allowedFunctionNames`.
//!
//! Response side: each candidate is a choice; its text parts (not `thought` parts) join into
//! `content`, `functionCall` parts become `tool_calls` with generated ids; `finishReason`
//! `STOP` is `stop` (`tool_calls` when the candidate called functions), `MAX_TOKENS` is
//! `length`, the safety family (`SAFETY`, `RECITATION`, `BLOCKLIST`, `PROHIBITED_CONTENT`,
//! `SPII`, `LANGUAGE`, `IMAGE_*`) is `content_filter`, anything else `stop`; a prompt blocked
//! before generation (`promptFeedback.blockReason`, no candidates) is an empty answer with
//! `content_filter`. `usageMetadata` becomes `usage`: prompt = `promptTokenCount` +
//! `toolUsePromptTokenCount`, completion = `candidatesTokenCount` + `thoughtsTokenCount`
//! (thinking is billed as output).
//!
//! Streams: every SSE event is a whole `GenerateContentResponse` carrying the new parts; the
//! stream has no terminator event and simply ends, so it is complete when every candidate has
//! reported a `finishReason` and the body then ends cleanly; `usageMetadata` (repeated, the
//! last one wins) becomes the usage chunk at the end. An `{"error": ...}` event is an error.
//!
//! Errors (`{"error": {"code", "message", "status", "details"}}`) are classified by HTTP
//! status like the other adapters (429 `RESOURCE_EXHAUSTED` and 5xx retry, 400
//! `INVALID_ARGUMENT` goes back to the caller), with two Gemini quirks: an invalid key is a 400
//! with reason `API_KEY_INVALID` and a 400 `FAILED_PRECONDITION` is about the account (region,
//! billing), so they are treated as 401 and 403 (escalate; the message keeps the original
//! status). A 429's wait comes from `retry-after` or else from the body's `RetryInfo`.

use super::sse::{SseEvent, SseTranslator};
use super::{ChunkStream, ProviderError, classify_reqwest, error_message, error_parts, expect_content_type, read_body_limited};
use crate::config::ModelConfig;
use crate::wire::{
    ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Content, ContentPart, Delta, ResponseMessage, Role, Usage, unix_now,
};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Google's documented placeholder for a function call whose real thought signature is unknown.
pub const SKIP_SIGNATURE: &str = "skip_thought_signature_validator";

/// How many thought signatures the adapter remembers.
const SIGNATURE_CAPACITY: usize = 4096;

#[derive(Clone)]
pub struct GeminiProvider {
    base: String,
    api_key: Option<String>,
    http: reqwest::Client,
    signatures: ThoughtSignatures,
}

impl GeminiProvider {
    pub fn new(base_url: String, api_key: Option<String>, http: reqwest::Client) -> Self {
        GeminiProvider {
            base: base_url,
            api_key,
            http,
            signatures: ThoughtSignatures::default(),
        }
    }

    pub(crate) fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    async fn send(&self, model: &ModelConfig, stream: bool, body: &Value) -> Result<reqwest::Response, ProviderError> {
        let mut rb = self.http.post(request_url(&self.base, model.upstream_id(), stream)).json(body);
        if let Some(key) = &self.api_key {
            rb = rb.header("x-goog-api-key", key);
        }
        let resp = rb.send().await.map_err(|e| classify_reqwest(&e))?;
        if !resp.status().is_success() {
            let (status, retry_after, body) = error_parts(resp).await;
            return Err(classify_error(status, retry_after, &body));
        }
        Ok(resp)
    }

    pub async fn complete(&self, req: &ChatRequest, model: &ModelConfig) -> Result<ChatCompletion, ProviderError> {
        let body = translate_request(req, Some(&self.signatures))?;
        let resp = self.send(model, false, &body).await?;
        expect_content_type(&resp, "application/json")?;
        let bytes = read_body_limited(resp, super::MAX_RESPONSE_BYTES).await?;
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| ProviderError::Malformed(format!("invalid GenerateContentResponse JSON: {e}")))?;
        translate_response_with(&v, &model.name, &mut CallIds::random(), Some(&self.signatures))
    }

    pub async fn stream(&self, req: &ChatRequest, model: &ModelConfig) -> Result<ChunkStream, ProviderError> {
        let body = translate_request(req, Some(&self.signatures))?;
        let resp = self.send(model, true, &body).await?;
        expect_content_type(&resp, "text/event-stream")?;
        let state = StreamState::new(&model.name, CallIds::random(), Some(self.signatures.clone()));
        Ok(super::sse::translate(resp, state))
    }
}

/// `{base}/models/{model}:generateContent`, or `:streamGenerateContent?alt=sse`. The model id
/// may be given with or without its `models/` prefix.
pub fn request_url(base: &str, upstream_id: &str, stream: bool) -> String {
    let model = upstream_id.strip_prefix("models/").unwrap_or(upstream_id);
    if stream {
        format!("{base}/models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("{base}/models/{model}:generateContent")
    }
}

/// Thought signatures of the function calls this adapter handed out, by tool call id (bounded;
/// the oldest are forgotten first).
#[derive(Clone, Default)]
pub struct ThoughtSignatures(Arc<Mutex<SignatureMap>>);

#[derive(Default)]
struct SignatureMap {
    by_id: HashMap<String, String>,
    order: VecDeque<String>,
}

impl ThoughtSignatures {
    pub fn insert(&self, id: &str, signature: &str) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.by_id.insert(id.to_string(), signature.to_string()).is_none() {
            m.order.push_back(id.to_string());
        }
        while m.order.len() > SIGNATURE_CAPACITY {
            if let Some(old) = m.order.pop_front() {
                m.by_id.remove(&old);
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).by_id.get(id).cloned()
    }
}

/// Tool call ids for one response: `call_<prefix>_<n>`.
pub struct CallIds {
    prefix: String,
    next: usize,
}

impl CallIds {
    pub fn random() -> Self {
        let hex = uuid::Uuid::new_v4().simple().to_string();
        Self::with_prefix(&hex[..16])
    }

    /// Deterministic ids (tests and fuzzing).
    pub fn with_prefix(prefix: &str) -> Self {
        CallIds {
            prefix: prefix.to_string(),
            next: 0,
        }
    }

    fn next_id(&mut self) -> String {
        let id = format!("call_{}_{}", self.prefix, self.next);
        self.next += 1;
        id
    }
}

fn unsupported(msg: String) -> ProviderError {
    ProviderError::Unsupported(msg)
}

/// OpenAI request -> Gemini `GenerateContentRequest`. Fails (nothing is sent) when the request
/// holds something Gemini cannot take; see the module docs.
pub fn translate_request(req: &ChatRequest, signatures: Option<&ThoughtSignatures>) -> Result<Value, ProviderError> {
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    // Tool call id -> function name, from the assistant turns seen so far.
    let mut call_names: HashMap<&str, &str> = HashMap::new();
    for (i, m) in req.messages.iter().enumerate() {
        let (role, parts) = match m.role {
            Role::System | Role::Developer => {
                let text = m.text();
                if !text.is_empty() {
                    system.push(json!({"text": text}));
                }
                continue;
            }
            Role::User => ("user", user_parts(m.content.as_ref(), i)?),
            Role::Assistant => {
                let mut parts = text_parts(m.content.as_ref());
                for (j, call) in m.tool_calls.iter().flatten().enumerate() {
                    let name = call
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .filter(|n| !n.is_empty())
                        .ok_or_else(|| unsupported(format!("messages[{i}].tool_calls[{j}] has no function name")))?;
                    let id = call.get("id").and_then(Value::as_str);
                    if let Some(id) = id {
                        call_names.insert(id, name);
                    }
                    let args = call
                        .pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .and_then(|a| serde_json::from_str::<Value>(a).ok())
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    let mut part = json!({"functionCall": {"name": name, "args": args}});
                    let known = id.and_then(|id| signatures.and_then(|s| s.get(id)));
                    if let Some(sig) = known.or_else(|| (j == 0).then(|| SKIP_SIGNATURE.to_string())) {
                        part["thoughtSignature"] = Value::String(sig);
                    }
                    parts.push(part);
                }
                ("model", parts)
            }
            Role::Tool | Role::Function => {
                let name = m
                    .tool_call_id
                    .as_deref()
                    .and_then(|id| call_names.get(id).copied())
                    .or(m.name.as_deref().filter(|n| !n.is_empty()))
                    .ok_or_else(|| {
                        unsupported(format!(
                            "messages[{i}]: no earlier assistant tool call has id '{}', and Gemini needs the function's name",
                            m.tool_call_id.as_deref().unwrap_or("")
                        ))
                    })?;
                let text = m.text();
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"result": text}),
                };
                ("user", vec![json!({"functionResponse": {"name": name, "response": response}})])
            }
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut() {
            Some((last, last_parts)) if *last == role => last_parts.extend(parts),
            _ => contents.push((role, parts)),
        }
    }
    let mut body = Map::new();
    if contents.is_empty() {
        if system.is_empty() {
            return Err(unsupported("the request has no content to send".into()));
        }
        // Gemini needs at least one content turn: a system-only request becomes the user turn.
        contents.push(("user", std::mem::take(&mut system)));
    }
    body.insert(
        "contents".into(),
        Value::Array(
            contents
                .into_iter()
                .map(|(role, parts)| json!({"role": role, "parts": parts}))
                .collect(),
        ),
    );
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let config = generation_config(req);
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    let declarations = function_declarations(req);
    if !declarations.is_empty() {
        if let Some(mode) = req.tool_choice.as_ref().and_then(function_calling_config) {
            body.insert("toolConfig".into(), json!({"functionCallingConfig": mode}));
        }
        body.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
    }
    Ok(Value::Object(body))
}

fn generation_config(req: &ChatRequest) -> Map<String, Value> {
    let mut config = Map::new();
    if let Some(t) = req.temperature {
        config.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        config.insert("topP".into(), json!(p));
    }
    if let Some(n) = req.max_output_tokens() {
        config.insert("maxOutputTokens".into(), json!(n));
    }
    let stop: Vec<Value> = match &req.stop {
        Some(Value::String(s)) => vec![json!(s)],
        Some(Value::Array(a)) => a.iter().filter(|s| s.as_str().is_some_and(|s| !s.is_empty())).cloned().collect(),
        _ => Vec::new(),
    };
    if !stop.is_empty() {
        config.insert("stopSequences".into(), Value::Array(stop));
    }
    for (openai, gemini) in [
        ("n", "candidateCount"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(v) = req.extra.get(openai).filter(|v| v.is_number()) {
            config.insert(gemini.into(), v.clone());
        }
    }
    if let Some(rf) = req.response_format.as_ref().filter(|f| f.wants_json()) {
        config.insert("responseMimeType".into(), json!("application/json"));
        if let Some(schema) = rf.extra.get("json_schema").and_then(|s| s.get("schema")).filter(|s| s.is_object()) {
            config.insert("responseJsonSchema".into(), schema.clone());
        }
    }
    config
}

fn function_declarations(req: &ChatRequest) -> Vec<Value> {
    req.tools
        .iter()
        .flatten()
        .filter(|t| t.get("type").and_then(Value::as_str).is_none_or(|ty| ty == "function"))
        .filter_map(|t| t.get("function"))
        .filter_map(|f| {
            let name = f.get("name").and_then(Value::as_str)?;
            let mut decl = json!({"name": name});
            if let Some(d) = f.get("description").and_then(Value::as_str) {
                decl["description"] = json!(d);
            }
            if let Some(p) = f.get("parameters").filter(|p| p.is_object()) {
                decl["parametersJsonSchema"] = p.clone();
            }
            Some(decl)
        })
        .collect()
}

fn function_calling_config(choice: &Value) -> Option<Value> {
    match choice {
        Value::String(s) => match s.as_str() {
            "none" => Some(json!({"mode": "NONE"})),
            "auto" => Some(json!({"mode": "AUTO"})),
            "required" => Some(json!({"mode": "ANY"})),
            _ => None,
        },
        Value::Object(_) => choice
            .pointer("/function/name")
            .and_then(Value::as_str)
            .map(|name| json!({"mode": "ANY", "allowedFunctionNames": [name]})),
        _ => None,
    }
}

/// Text (and refusal) parts of an assistant turn.
fn text_parts(content: Option<&Content>) -> Vec<Value> {
    match content {
        None => Vec::new(),
        Some(Content::Text(s)) if s.is_empty() => Vec::new(),
        Some(Content::Text(s)) => vec![json!({"text": s})],
        Some(Content::Parts(parts)) => parts
            .iter()
            .filter_map(|p| p.text.as_deref().or_else(|| p.extra.get("refusal").and_then(Value::as_str)))
            .filter(|t| !t.is_empty())
            .map(|t| json!({"text": t}))
            .collect(),
    }
}

fn user_parts(content: Option<&Content>, i: usize) -> Result<Vec<Value>, ProviderError> {
    let Some(Content::Parts(parts)) = content else {
        return Ok(text_parts(content));
    };
    let mut out = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        if let Some(part) = user_part(p).map_err(|why| unsupported(format!("messages[{i}].content[{j}]: {why}")))? {
            out.push(part);
        }
    }
    Ok(out)
}

fn user_part(p: &ContentPart) -> Result<Option<Value>, String> {
    let field = |path: &str| p.extra.get(p.kind.as_str()).and_then(|o| o.pointer(path)).and_then(Value::as_str);
    match p.kind.as_str() {
        "image_url" => {
            let url = p
                .extra
                .get("image_url")
                .and_then(|u| u.get("url").or(Some(u)))
                .and_then(Value::as_str)
                .ok_or("image_url has no url")?;
            media_part(url).map(Some)
        }
        "input_audio" => {
            let data = field("/data").ok_or("input_audio has no data")?;
            let format = field("/format").unwrap_or("wav");
            Ok(Some(json!({"inlineData": {"mimeType": format!("audio/{format}"), "data": data}})))
        }
        "file" => match field("/file_data") {
            Some(url) => media_part(url).map(Some),
            None => Err("a file part needs inline file_data (a data: URL); OpenAI file ids mean nothing to Gemini".into()),
        },
        _ => Ok(p.text.as_deref().filter(|t| !t.is_empty()).map(|t| json!({"text": t}))),
    }
}

/// A `data:` URL as `inlineData`, or an `https://` / `gs://` URL as `fileData`.
fn media_part(url: &str) -> Result<Value, String> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').ok_or("malformed data: URL")?;
        let mime = meta.strip_suffix(";base64").ok_or("only base64 data: URLs can be sent to Gemini")?;
        if mime.is_empty() {
            return Err("the data: URL names no MIME type".into());
        }
        return Ok(json!({"inlineData": {"mimeType": mime, "data": data}}));
    }
    let shown = url.split(['?', '#']).next().unwrap_or(url);
    let shown: String = shown.chars().take(120).collect();
    if !(url.starts_with("https://") || url.starts_with("gs://")) {
        return Err(format!(
            "Gemini fetches only https:// and gs:// URLs, not '{shown}'; send the image as a data: URL"
        ));
    }
    let mime = mime_from_path(url).ok_or_else(|| {
        format!("cannot tell the media type of '{shown}' from its extension, and Gemini needs one; send the image as a data: URL")
    })?;
    Ok(json!({"fileData": {"mimeType": mime, "fileUri": url}}))
}

/// The MIME type for a URL's file extension, for the types Gemini reads.
fn mime_from_path(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        "mp3" => "audio/mp3",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        _ => return None,
    })
}

/// Gemini `finishReason` -> OpenAI `finish_reason`.
pub fn finish_reason(reason: &str, called_functions: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "LANGUAGE"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => "content_filter",
        _ if called_functions => "tool_calls",
        _ => "stop",
    }
}

/// `usageMetadata` -> OpenAI usage (thinking tokens are billed as output).
fn usage_of(meta: &Value) -> Usage {
    let n = |k: &str| meta.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage::new(
        n("promptTokenCount").saturating_add(n("toolUsePromptTokenCount")),
        n("candidatesTokenCount").saturating_add(n("thoughtsTokenCount")),
    )
}

/// The parts of one candidate, as OpenAI pieces.
struct CandidateParts {
    index: u32,
    text: String,
    /// Each as `{"id", "type": "function", "function": {"name", "arguments"}}`.
    calls: Vec<Value>,
    finish: Option<String>,
}

fn candidate_parts(position: usize, c: &Value, ids: &mut CallIds, signatures: Option<&ThoughtSignatures>) -> CandidateParts {
    let index = c
        .get("index")
        .and_then(Value::as_u64)
        .and_then(|i| u32::try_from(i).ok())
        .unwrap_or(position as u32);
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in c.pointer("/content/parts").and_then(Value::as_array).into_iter().flatten() {
        if let Some(call) = part.get("functionCall") {
            let id = ids.next_id();
            if let (Some(sig), Some(store)) = (part.get("thoughtSignature").and_then(Value::as_str), signatures) {
                store.insert(&id, sig);
            }
            let args = match call.get("args") {
                Some(a @ Value::Object(_)) => a.to_string(),
                _ => "{}".to_string(),
            };
            calls.push(json!({
                "id": id,
                "type": "function",
                "function": {"name": call.get("name").cloned().unwrap_or(json!("")), "arguments": args},
            }));
        } else if let Some(t) = part.get("text").and_then(Value::as_str)
            && part.get("thought").and_then(Value::as_bool) != Some(true)
        {
            text.push_str(t);
        }
    }
    let finish = c
        .get("finishReason")
        .and_then(Value::as_str)
        .map(|r| finish_reason(r, !calls.is_empty()).to_string());
    CandidateParts {
        index,
        text,
        calls,
        finish,
    }
}

/// A response blocked before generation: `promptFeedback.blockReason` and no candidates.
fn prompt_blocked(v: &Value) -> bool {
    v.get("candidates").and_then(Value::as_array).is_none_or(|c| c.is_empty())
        && v.pointer("/promptFeedback/blockReason").and_then(Value::as_str).is_some()
}

fn response_id(v: &Value) -> Option<String> {
    v.get("responseId").and_then(Value::as_str).map(|s| format!("chatcmpl-{s}"))
}

/// Gemini `GenerateContentResponse` -> OpenAI chat.completion (tool call ids are random).
pub fn translate_response(v: &Value, model_name: &str) -> Result<ChatCompletion, ProviderError> {
    translate_response_with(v, model_name, &mut CallIds::random(), None)
}

fn translate_response_with(
    v: &Value,
    model_name: &str,
    ids: &mut CallIds,
    signatures: Option<&ThoughtSignatures>,
) -> Result<ChatCompletion, ProviderError> {
    if let Some(e) = v.get("error") {
        return Err(ProviderError::Malformed(format!(
            "error object in a success response: {}",
            error_message(Some(e), b"")
        )));
    }
    let mut choices = Vec::new();
    if prompt_blocked(v) {
        choices.push(Choice {
            index: 0,
            message: ResponseMessage {
                role: "assistant".into(),
                content: Some(String::new()),
                tool_calls: None,
                extra: Map::new(),
            },
            finish_reason: Some("content_filter".into()),
            extra: Map::new(),
        });
    } else {
        let candidates = v
            .get("candidates")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ProviderError::Malformed("GenerateContentResponse has no candidates".into()))?;
        for (position, c) in candidates.iter().enumerate() {
            let p = candidate_parts(position, c, ids, signatures);
            let has_calls = !p.calls.is_empty();
            choices.push(Choice {
                index: p.index,
                message: ResponseMessage {
                    role: "assistant".into(),
                    content: (!p.text.is_empty() || !has_calls).then_some(p.text),
                    tool_calls: has_calls.then_some(p.calls),
                    extra: Map::new(),
                },
                finish_reason: p.finish,
                extra: Map::new(),
            });
        }
    }
    Ok(ChatCompletion {
        id: response_id(v).unwrap_or_else(|| "chatcmpl-gemini".into()),
        object: "chat.completion".into(),
        created: unix_now(),
        model: model_name.to_string(),
        choices,
        usage: v.get("usageMetadata").map(usage_of),
        extra: Map::new(),
    })
}

/// Translation state of one Gemini stream.
struct StreamState {
    id: String,
    model: String,
    ids: CallIds,
    signatures: Option<ThoughtSignatures>,
    /// Per candidate index: tool calls so far, and whether its finishReason came.
    candidates: BTreeMap<u32, (usize, bool)>,
    usage: Option<Usage>,
}

impl StreamState {
    fn new(model: &str, ids: CallIds, signatures: Option<ThoughtSignatures>) -> Self {
        StreamState {
            id: "chatcmpl-gemini".into(),
            model: model.to_string(),
            ids,
            signatures,
            candidates: BTreeMap::new(),
            usage: None,
        }
    }

    fn chunk(&self, index: u32, delta: Delta, finish_reason: Option<String>) -> ChatChunk {
        ChatChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: unix_now(),
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index,
                delta,
                finish_reason,
                extra: Map::new(),
            }],
            usage: None,
            extra: Map::new(),
        }
    }

    /// The first sight of a candidate: its role chunk.
    fn open(&mut self, index: u32, out: &mut VecDeque<Result<ChatChunk, ProviderError>>) {
        if self.candidates.contains_key(&index) {
            return;
        }
        self.candidates.insert(index, (0, false));
        let delta = Delta {
            role: Some("assistant".into()),
            content: Some(String::new()),
            ..Default::default()
        };
        out.push_back(Ok(self.chunk(index, delta, None)));
    }

    fn on_data(&mut self, data: &str, out: &mut VecDeque<Result<ChatChunk, ProviderError>>) {
        let v: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                out.push_back(Err(ProviderError::Malformed(format!("invalid chunk JSON: {e}"))));
                return;
            }
        };
        if let Some(e) = v.get("error") {
            let status = e.get("status").and_then(Value::as_str).unwrap_or("UNKNOWN");
            let msg = format!("upstream error event: {status}: {}", error_message(Some(e), data.as_bytes()));
            out.push_back(Err(ProviderError::Stream(msg)));
            return;
        }
        // Gemini repeats responseId in every event; the stream keeps the first.
        if self.candidates.is_empty()
            && let Some(id) = response_id(&v)
        {
            self.id = id;
        }
        if let Some(meta) = v.get("usageMetadata") {
            self.usage = Some(usage_of(meta));
        }
        if prompt_blocked(&v) {
            self.open(0, out);
            self.candidates.insert(0, (0, true));
            out.push_back(Ok(self.chunk(0, Delta::default(), Some("content_filter".into()))));
            return;
        }
        for (position, c) in v.get("candidates").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let p = candidate_parts(position, c, &mut self.ids, self.signatures.as_ref());
            self.open(p.index, out);
            if !p.text.is_empty() {
                let delta = Delta {
                    content: Some(p.text),
                    ..Default::default()
                };
                out.push_back(Ok(self.chunk(p.index, delta, None)));
            }
            let Some((calls_so_far, finished)) = self.candidates.get(&p.index).copied() else {
                continue;
            };
            if !p.calls.is_empty() {
                let calls: Vec<Value> = p
                    .calls
                    .into_iter()
                    .enumerate()
                    .map(|(k, mut call)| {
                        call["index"] = json!(calls_so_far + k);
                        call
                    })
                    .collect();
                let n = calls.len();
                self.candidates.insert(p.index, (calls_so_far + n, finished));
                let delta = Delta {
                    tool_calls: Some(calls),
                    ..Default::default()
                };
                out.push_back(Ok(self.chunk(p.index, delta, None)));
            }
            if let Some(reason) = c.get("finishReason").and_then(Value::as_str)
                && !finished
            {
                let (calls, _) = self.candidates[&p.index];
                self.candidates.insert(p.index, (calls, true));
                let finish = finish_reason(reason, calls > 0).to_string();
                out.push_back(Ok(self.chunk(p.index, Delta::default(), Some(finish))));
            }
        }
    }
}

impl SseTranslator for StreamState {
    const TERMINATOR: &'static str = "a finishReason";

    fn on_event(&mut self, ev: &SseEvent, out: &mut VecDeque<Result<ChatChunk, ProviderError>>) -> bool {
        let data = ev.data.trim();
        if !data.is_empty() {
            self.on_data(data, out);
        }
        false
    }

    fn on_end(&mut self, partial: bool, out: &mut VecDeque<Result<ChatChunk, ProviderError>>) -> bool {
        let complete = !partial && !self.candidates.is_empty() && self.candidates.values().all(|(_, finished)| *finished);
        if complete && let Some(usage) = self.usage {
            out.push_back(Ok(ChatChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".into(),
                created: unix_now(),
                model: self.model.clone(),
                choices: Vec::new(),
                usage: Some(usage),
                extra: Map::new(),
            }));
        }
        complete
    }
}

/// Translate a whole Gemini SSE body, given as the chunks it arrived in, without a network
/// (tests and fuzzing; same state machine as a live stream, deterministic tool call ids).
pub fn translate_sse_chunks(chunks: &[&[u8]], model: &str) -> Vec<Result<ChatChunk, ProviderError>> {
    super::offline::drive(chunks, StreamState::new(model, CallIds::with_prefix("gemini"), None))
}

/// A Gemini error response -> [`ProviderError::Status`]; see the module docs for the two
/// statuses that are reclassified.
pub fn classify_error(status: u16, retry_after: Option<Duration>, body: &[u8]) -> ProviderError {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    // Some endpoints wrap the error in a one-element array.
    let error = parsed.as_ref().map(|v| v.get(0).unwrap_or(v)).and_then(|v| v.get("error"));
    let message = error_message(error, body);
    let rpc_status = error.and_then(|e| e.get("status")).and_then(Value::as_str);
    let details = error.and_then(|e| e.get("details")).and_then(Value::as_array);
    let reason = details.into_iter().flatten().find_map(|d| d.get("reason").and_then(Value::as_str));
    let retry_info = details
        .into_iter()
        .flatten()
        .find_map(|d| d.get("retryDelay").and_then(Value::as_str))
        .and_then(parse_proto_duration);
    let effective = match (status, rpc_status, reason) {
        (400, _, Some("API_KEY_INVALID")) => 401,
        (400, Some("FAILED_PRECONDITION"), _) => 403,
        _ => status,
    };
    let mut described = match rpc_status {
        Some(s) => format!("{s}: {message}"),
        None => message,
    };
    if effective != status {
        described = format!(
            "{described} (HTTP {status}{}, treated as {effective})",
            reason.map(|r| format!(" {r}")).unwrap_or_default()
        );
    }
    ProviderError::Status {
        status: effective,
        retry_after: retry_after.or(retry_info),
        message: described,
    }
}

/// A protobuf JSON `Duration` ("37s", "1.5s").
fn parse_proto_duration(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().strip_suffix('s')?.parse().ok()?;
    (0.0..1e9).contains(&secs).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests;
