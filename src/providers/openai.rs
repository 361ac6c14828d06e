//! Adapter for OpenAI-compatible Chat Completions servers.
//!
//! The request is forwarded nearly verbatim (it already is the OpenAI format): only `model` is
//! replaced by the upstream id, Ladder's `ladder` hints are dropped, and streams always ask for
//! `include_usage` so that Ladder can cost the call (the usage chunk is withheld from clients that
//! did not ask for it).

use super::sse::SseParser;
use super::{ChunkStream, ProviderError, classify_reqwest, is_content_type, read_body_limited, status_error};
use crate::config::ModelConfig;
use crate::wire::{ChatChunk, ChatCompletion, ChatRequest, StreamOptions};
use futures::StreamExt;
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
        if !is_content_type(&resp, "application/json") {
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string();
            return Err(ProviderError::Malformed(format!(
                "expected application/json, got content-type {ct}"
            )));
        }
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
        if !is_content_type(&resp, "text/event-stream") {
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string();
            return Err(ProviderError::Malformed(format!(
                "expected text/event-stream, got content-type {ct}"
            )));
        }
        Ok(chunk_stream(resp))
    }
}

struct StreamState {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    parser: SseParser,
    ready: VecDeque<Result<ChatChunk, ProviderError>>,
    done: bool,
}

/// Parse an OpenAI SSE body into chunks; a body that ends before `data: [DONE]` is an error.
fn chunk_stream(resp: reqwest::Response) -> ChunkStream {
    let state = StreamState {
        body: resp.bytes_stream().boxed(),
        parser: SseParser::new(),
        ready: VecDeque::new(),
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.ready.pop_front() {
                if item.is_err() {
                    st.done = true;
                    st.ready.clear();
                }
                return Some((item, st));
            }
            if st.done {
                return None;
            }
            match st.body.next().await {
                Some(Ok(bytes)) => {
                    for ev in st.parser.push(&bytes) {
                        if st.done {
                            break;
                        }
                        let data = ev.data.trim();
                        if data == "[DONE]" {
                            st.done = true;
                            break;
                        }
                        if data.is_empty() {
                            continue;
                        }
                        st.ready.push_back(parse_chunk(data));
                    }
                }
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(ProviderError::Stream(format!("connection broke mid-stream: {e}"))), st));
                }
                None => {
                    st.done = true;
                    return Some((Err(ProviderError::Stream("upstream closed the stream before [DONE]".into())), st));
                }
            }
        }
    })
    .boxed()
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
            Err(ProviderError::Stream(format!("invalid chunk JSON: {e}")))
        }
    }
}
