//! Upstream provider adapters: the only code that knows a provider's wire format.
//!
//! Each adapter takes Ladder's internal request (the OpenAI [`ChatRequest`]) and a catalogue
//! model, calls the upstream API, and returns an OpenAI-shaped [`ChatCompletion`] or a stream of
//! OpenAI-shaped [`ChatChunk`]s. Failures are classified into [`ProviderError`] so that the
//! executor can decide between retrying, escalating and giving up without parsing messages.
//!
//! - [`openai`]: any OpenAI-compatible Chat Completions server (OpenAI, vLLM, llama.cpp, Together...).
//! - [`anthropic`]: the Anthropic Messages API, including its SSE event types.
//! - [`gemini`]: the Google Gemini API (`generateContent`, `streamGenerateContent?alt=sse`).
//! - [`sse`]: a small incremental Server-Sent-Events parser the adapters share.

pub mod anthropic;
pub mod gemini;
mod offline;
pub mod openai;
pub mod sse;

use crate::config::{ModelConfig, ProviderConfig, ProviderKind, TimeoutConfig};
use crate::wire::{ChatChunk, ChatCompletion, ChatRequest};
use futures::stream::BoxStream;
use std::time::Duration;

/// Largest upstream response body Ladder will read (non-streaming).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// A classified upstream failure.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderError {
    /// The upstream answered with a non-success status.
    Status {
        status: u16,
        retry_after: Option<Duration>,
        message: String,
    },
    /// Could not connect, or the connection was reset before a response.
    Connect(String),
    /// No (complete) answer within the allowed time; `phase` says which limit.
    Timeout { phase: &'static str },
    /// A success status with a body that is not what the API promises (malformed JSON, wrong
    /// content type, missing fields).
    Malformed(String),
    /// The response body exceeded [`MAX_RESPONSE_BYTES`], or one event of a stream exceeded
    /// [`sse::MAX_EVENT_BYTES`].
    Oversized,
    /// A stream that broke after it started (dropped connection, missing terminator, error event).
    Stream(String),
    /// The request cannot be expressed in this upstream's API (e.g. an image URL the upstream
    /// cannot fetch), so nothing was sent. Not the upstream's fault and not necessarily the
    /// caller's: the next rung may take it.
    Unsupported(String),
}

impl ProviderError {
    /// Short machine-readable kind, for logs and decision records.
    pub fn kind(&self) -> String {
        match self {
            ProviderError::Status { status, .. } => format!("http_{status}"),
            ProviderError::Connect(_) => "connect_error".into(),
            ProviderError::Timeout { phase } => format!("timeout_{phase}"),
            ProviderError::Malformed(_) => "malformed_response".into(),
            ProviderError::Oversized => "oversized_response".into(),
            ProviderError::Stream(_) => "stream_error".into(),
            ProviderError::Unsupported(_) => UNSUPPORTED_KIND.into(),
        }
    }

    /// Worth trying the same model again after a backoff.
    pub fn retry_same_model(&self) -> bool {
        match self {
            ProviderError::Status { status, .. } => matches!(status, 429 | 500 | 502 | 503 | 504 | 529),
            ProviderError::Connect(_) => true,
            _ => false,
        }
    }

    /// Worth moving up the chain. Client errors the upstream blamed on the request itself (400,
    /// 404, 422) are not: another model would reject it too, so the caller gets the error.
    pub fn escalates(&self) -> bool {
        match self {
            ProviderError::Status { status, .. } => !matches!(status, 400 | 404 | 422),
            _ => true,
        }
    }

    /// Counts against the model's circuit breaker.
    pub fn trips_breaker(&self) -> bool {
        match self {
            ProviderError::Status { status, .. } => *status == 429 || *status >= 500 || *status == 401 || *status == 403,
            ProviderError::Unsupported(_) => false,
            _ => true,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The same error with every occurrence of `secret` (the provider's API key) masked: an
    /// upstream may echo the key in an error body, and these messages reach logs, decision
    /// records and clients.
    pub fn redact(self, secret: Option<&str>) -> ProviderError {
        let Some(secret) = secret.filter(|s| !s.is_empty()) else {
            return self;
        };
        let mask = |m: String| if m.contains(secret) { m.replace(secret, "[redacted]") } else { m };
        match self {
            ProviderError::Status {
                status,
                retry_after,
                message,
            } => ProviderError::Status {
                status,
                retry_after,
                message: mask(message),
            },
            ProviderError::Connect(m) => ProviderError::Connect(mask(m)),
            ProviderError::Malformed(m) => ProviderError::Malformed(mask(m)),
            ProviderError::Stream(m) => ProviderError::Stream(mask(m)),
            ProviderError::Unsupported(m) => ProviderError::Unsupported(mask(m)),
            e @ (ProviderError::Timeout { .. } | ProviderError::Oversized) => e,
        }
    }
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProviderError::Status { status, message, .. } => write!(f, "upstream returned {status}: {message}"),
            ProviderError::Connect(m) => write!(f, "connection failed: {m}"),
            ProviderError::Timeout { phase } => write!(f, "timed out ({phase})"),
            ProviderError::Malformed(m) => write!(f, "malformed upstream response: {m}"),
            ProviderError::Oversized => write!(
                f,
                "upstream response too large (limits: {MAX_RESPONSE_BYTES} bytes per body, {} bytes per stream event)",
                sse::MAX_EVENT_BYTES
            ),
            ProviderError::Stream(m) => write!(f, "upstream stream failed: {m}"),
            ProviderError::Unsupported(m) => write!(f, "request not supported by this upstream: {m}"),
        }
    }
}

/// [`ProviderError::kind`] of [`ProviderError::Unsupported`].
pub const UNSUPPORTED_KIND: &str = "unsupported_request";

/// A stream of OpenAI-shaped chunks from an upstream.
pub type ChunkStream = BoxStream<'static, Result<ChatChunk, ProviderError>>;

/// One configured upstream.
#[derive(Clone)]
pub enum Provider {
    OpenAi(openai::OpenAiProvider),
    Anthropic(anthropic::AnthropicProvider),
    Gemini(gemini::GeminiProvider),
}

impl Provider {
    /// Build the adapter; reads the API key from the configured environment variable.
    pub fn new(cfg: &ProviderConfig, http: reqwest::Client) -> anyhow::Result<Provider> {
        let api_key = match &cfg.api_key_env {
            Some(var) => Some(
                std::env::var(var)
                    .map_err(|_| anyhow::anyhow!("providers '{}': environment variable {var} (api_key_env) is not set", cfg.name))?,
            ),
            None => None,
        };
        let base = cfg
            .effective_base_url()
            .ok_or_else(|| anyhow::anyhow!("providers '{}': base_url is required", cfg.name))?
            .trim_end_matches('/')
            .to_string();
        Ok(match cfg.kind {
            ProviderKind::Openai => Provider::OpenAi(openai::OpenAiProvider::new(base, api_key, http)),
            ProviderKind::Anthropic => Provider::Anthropic(anthropic::AnthropicProvider::new(base, api_key, http)),
            ProviderKind::Gemini => Provider::Gemini(gemini::GeminiProvider::new(base, api_key, http)),
        })
    }

    fn api_key(&self) -> Option<&str> {
        match self {
            Provider::OpenAi(p) => p.api_key(),
            Provider::Anthropic(p) => p.api_key(),
            Provider::Gemini(p) => p.api_key(),
        }
    }

    pub async fn complete(&self, req: &ChatRequest, model: &ModelConfig) -> Result<ChatCompletion, ProviderError> {
        let r = match self {
            Provider::OpenAi(p) => p.complete(req, model).await,
            Provider::Anthropic(p) => p.complete(req, model).await,
            Provider::Gemini(p) => p.complete(req, model).await,
        };
        r.map_err(|e| e.redact(self.api_key()))
    }

    /// Start a stream: resolves once the upstream accepted the request (status and headers).
    pub async fn stream(&self, req: &ChatRequest, model: &ModelConfig) -> Result<ChunkStream, ProviderError> {
        use futures::StreamExt;
        let r = match self {
            Provider::OpenAi(p) => p.stream(req, model).await,
            Provider::Anthropic(p) => p.stream(req, model).await,
            Provider::Gemini(p) => p.stream(req, model).await,
        };
        match (r, self.api_key()) {
            (Err(e), key) => Err(e.redact(key)),
            (Ok(s), None) => Ok(s),
            (Ok(s), Some(key)) => {
                let key = key.to_string();
                Ok(s.map(move |item| item.map_err(|e| e.redact(Some(&key)))).boxed())
            }
        }
    }
}

/// The shared HTTP client: connection pooling, connect timeout, no global request timeout (the
/// executor sets per-attempt deadlines).
pub fn http_client(timeouts: &TimeoutConfig) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(timeouts.connect_ms))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()?)
}

/// Map a reqwest failure to a [`ProviderError`].
pub(crate) fn classify_reqwest(e: &reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout { phase: "attempt" }
    } else if e.is_connect() || e.is_request() {
        ProviderError::Connect(error_chain(e))
    } else if e.is_body() || e.is_decode() {
        ProviderError::Stream(error_chain(e))
    } else {
        ProviderError::Connect(error_chain(e))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// `retry-after` (seconds or HTTP date) or `retry-after-ms`.
pub(crate) fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        && ms >= 0.0
    {
        return Some(Duration::from_millis(ms as u64));
    }
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs >= 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs));
    }
    let when = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    let delta = when - time::OffsetDateTime::now_utc();
    Some(Duration::from_secs_f64(delta.as_seconds_f64().max(0.0)))
}

/// Read a whole response body, refusing more than `limit` bytes.
pub(crate) async fn read_body_limited(resp: reqwest::Response, limit: usize) -> Result<bytes::Bytes, ProviderError> {
    use futures::StreamExt;
    if resp.content_length().is_some_and(|n| n as usize > limit) {
        return Err(ProviderError::Oversized);
    }
    let mut buf = bytes::BytesMut::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ProviderError::Connect(format!("reading body: {}", error_chain(&e))))?;
        if buf.len() + chunk.len() > limit {
            return Err(ProviderError::Oversized);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A non-success response's status, `retry-after` and (first 64 KiB of) body.
pub(crate) async fn error_parts(resp: reqwest::Response) -> (u16, Option<Duration>, bytes::Bytes) {
    let status = resp.status().as_u16();
    let retry_after = parse_retry_after(resp.headers());
    let body = read_body_limited(resp, 64 * 1024).await.unwrap_or_default();
    (status, retry_after, body)
}

/// The upstream's `error.message`, else the start of the body.
pub(crate) fn error_message(error: Option<&serde_json::Value>, body: &[u8]) -> String {
    error
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned())
}

/// Turn a non-success response into a [`ProviderError::Status`], keeping the upstream's message.
pub(crate) async fn status_error(resp: reqwest::Response) -> ProviderError {
    let (status, retry_after, body) = error_parts(resp).await;
    let v = serde_json::from_slice::<serde_json::Value>(&body).ok();
    ProviderError::Status {
        status,
        retry_after,
        message: error_message(v.as_ref().and_then(|v| v.get("error")), &body),
    }
}

/// A success response whose content type is not `expected` is malformed (e.g. an HTML error page
/// from a proxy in front of the provider).
pub(crate) fn expect_content_type(resp: &reqwest::Response, expected: &str) -> Result<(), ProviderError> {
    let ct = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    if ct.to_ascii_lowercase().starts_with(expected) {
        Ok(())
    } else {
        Err(ProviderError::Malformed(format!("expected {expected}, got content-type {ct}")))
    }
}

#[cfg(test)]
mod redact_tests {
    use super::ProviderError;

    #[test]
    fn redact_masks_the_key_everywhere() {
        let e = ProviderError::Status {
            status: 401,
            retry_after: None,
            message: "Incorrect API key provided: sk-secret-1 (sk-secret-1)".into(),
        };
        assert_eq!(
            e.redact(Some("sk-secret-1")).to_string(),
            "upstream returned 401: Incorrect API key provided: [redacted] ([redacted])"
        );
        let e = ProviderError::Stream("echo sk-secret-1".into());
        assert_eq!(e.clone().redact(None), e);
        assert_eq!(e.redact(Some("sk-secret-1")), ProviderError::Stream("echo [redacted]".into()));
    }
}
