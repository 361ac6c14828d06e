//! Adapter for OpenAI-compatible Chat Completions servers.
//!
//! The request is forwarded nearly verbatim (it already is the OpenAI format): only `model` is
//! replaced by the upstream id, Ladder's `ladder` hints are dropped, and streams always ask for
//! `include_usage` so that Ladder can cost the call (the usage chunk is withheld from clients that
//! did not ask for it).

use super::sse::{SseEvent, SseTranslator};
use super::{ChunkStream, ProviderError, classify_reqwest, expect_content_type, read_body_limited, status_error};
use crate::config::ModelConfig;
use crate::wire::{ChatChunk, ChatCompletion, ChatRequest, StreamOptions};
use std::collections::VecDeque;

#[derive(Clone)]
pub struct OpenAiProvider {
    url: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl OpenAiProvider {
    pub fn new(base_url: String, api_key: Option<String>, http: reqwest::Client) -> Self {
        OpenAiProvider {
            url: format!("{base_url}/chat/completions"),
            api_key,
            http,
        }
    }

    pub(crate) fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    fn body(req: &ChatRequest, model: &ModelConfig, stream: bool) -> ChatRequest {
        let mut body = req.clone();
        body.model = model.upstream_id().to_string();
        body.ladder = None;
        if stream {
            body.stream = Some(true);
            let mut opts = body.stream_options.take().unwrap_or_default();
            opts.include_usage = true;
            body.stream_options = Some(StreamOptions { ..opts });
        } else {
            body.stream = None;
            body.stream_options = None;
        }
        body
    }

    async fn send(&self, body: &ChatRequest) -> Result<reqwest::Response, ProviderError> {
        let mut rb = self.http.post(&self.url).json(body);
        if let Some(key) = &self.api_key {
            rb = rb.bearer_auth(key);
        }
        let resp = rb.send().await.map_err(|e| classify_reqwest(&e))?;
        if !resp.status().is_success() {
            return Err(status_error(resp).await);
        }
        Ok(resp)
    }

    pub async fn complete(&self, req: &ChatRequest, model: &ModelConfig) -> Result<ChatCompletion, ProviderError> {
        let resp = self.send(&Self::body(req, model, false)).await?;
        expect_content_type(&resp, "application/json")?;
        let bytes = read_body_limited(resp, super::MAX_RESPONSE_BYTES).await?;
        let completion: ChatCompletion =
            serde_json::from_slice(&bytes).map_err(|e| ProviderError::Malformed(format!("invalid chat.completion JSON: {e}")))?;
        if completion.choices.is_empty() {
            return Err(ProviderError::Malformed("chat.completion has no choices".into()));
        }
        Ok(completion)
    }

    pub async fn stream(&self, req: &ChatRequest, model: &ModelConfig) -> Result<ChunkStream, ProviderError> {
        let resp = self.send(&Self::body(req, model, true)).await?;
        expect_content_type(&resp, "text/event-stream")?;
        Ok(chunk_stream(resp))
    }
}

/// OpenAI's SSE: `data: <chunk JSON>` events, ended by `data: [DONE]`.
struct OpenAiEvents;

impl SseTranslator for OpenAiEvents {
    const TERMINATOR: &'static str = "[DONE]";

    fn on_event(&mut self, ev: &SseEvent, out: &mut VecDeque<Result<ChatChunk, ProviderError>>) -> bool {
        let data = ev.data.trim();
        if data == "[DONE]" {
            return true;
        }
        if !data.is_empty() {
            out.push_back(parse_chunk(data));
        }
        false
    }
}

/// Translate a whole OpenAI SSE body, given as the chunks it arrived in, without a network
/// (tests and fuzzing; same parser as a live stream).
pub fn translate_sse_chunks(chunks: &[&[u8]]) -> Vec<Result<ChatChunk, ProviderError>> {
    super::offline::drive(chunks, OpenAiEvents)
}

/// Parse an OpenAI SSE body into chunks; a body that ends before `data: [DONE]` is an error.
fn chunk_stream(resp: reqwest::Response) -> ChunkStream {
    super::sse::translate(resp, OpenAiEvents)
}

fn parse_chunk(data: &str) -> Result<ChatChunk, ProviderError> {
    match serde_json::from_str::<ChatChunk>(data) {
        Ok(chunk) => Ok(chunk),
        Err(e) => {
            // An in-stream error object, as OpenAI sends for failures after the stream started.
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(data)
                && let Some(msg) = v.pointer("/error/message").and_then(|m| m.as_str())
            {
                return Err(ProviderError::Stream(format!("upstream error event: {msg}")));
            }
            Err(ProviderError::Malformed(format!("invalid chunk JSON: {e}")))
        }
    }
}
