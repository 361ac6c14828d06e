//! The API-neutral request pipeline shared by the front ends.
//!
//! `POST /v1/chat/completions`, `POST /v1/messages` and
//! `POST /v1beta/models/{model}:generateContent` (or `:streamGenerateContent`)
//! run the same steps:
//!
//! 1. read the body, check auth (and for Anthropic the `anthropic-version`
//!    header), parse and validate the JSON like the real API would
//!    ([`openai::parse`] / [`anthropic::parse`] / [`gemini::parse`]);
//! 2. pick the model's behaviour for this request (scripted `sequence`, then
//!    seeded `fail_rate`, else normal) and record stats;
//! 3. wait `latency_ms`, then either inject the fault or synthesize an answer
//!    ([`super::answer`]) and render it in the API's wire format, as a JSON
//!    document or as a server-sent-event stream.
//!
//! Front ends implement rendering; this module decides *what* to send.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;

use super::answer::{self, Answer, GenRequest, OutputFormat, Prompt, ToolRequest};
use super::net::{ConnKill, Frame, ScriptedBody};
use super::scenario::{Behavior, Scenario};
use super::state::{Api, AppState, InFlightGuard, LoggedRequest};
use super::{anthropic, gemini, openai};

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// A request, parsed and validated by a front end.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub model: String,
    pub stream: bool,
    /// OpenAI `stream_options.include_usage`.
    pub include_usage: bool,
    /// Gemini `streamGenerateContent` without `alt=sse`: the chunks as one JSON array.
    pub json_array_stream: bool,
    pub prompt: Prompt,
    pub format: OutputFormat,
    pub max_tokens: Option<u64>,
    pub stop: Vec<String>,
    pub tool: Option<ToolRequest>,
}

/// An error in API-neutral form; front ends render it in their own shape.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI `param`.
    pub param: Option<String>,
    /// Overrides the error type the front end would derive from the status (Gemini: the RPC
    /// `status`).
    pub kind: Option<&'static str>,
    /// OpenAI `code`, derived from the status when `None` (Gemini: an `ErrorInfo` reason).
    pub code: Option<&'static str>,
    pub headers: Vec<(HeaderName, String)>,
    /// How long the client should wait (Gemini says so in a `RetryInfo` detail, the others in
    /// `headers`). (u32 keeps the error small.)
    pub retry_delay_ms: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            kind: None,
            code: None,
            headers: Vec::new(),
            retry_delay_ms: None,
        }
    }

    /// A 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

/// Everything a front end needs to render a response.
pub(crate) struct RenderCtx<'a> {
    pub parsed: &'a Parsed,
    pub answer: &'a Answer,
    /// Response id, e.g. `chatcmpl-...` / `msg_...`.
    pub id: String,
    pub created: u64,
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A fresh random id suffix.
pub(crate) fn random_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The random part of a response id (`chatcmpl-<x>` / `msg_<x>` -> `<x>`).
pub(crate) fn id_suffix(id: &str) -> &str {
    id.rsplit(['-', '_']).next().unwrap_or(id)
}

/// Renders an error in `api`'s shape.
pub(crate) fn error_response(api: Api, err: ApiError) -> Response {
    let request_id = format!("req_{}", random_id());
    let body = match api {
        Api::Openai => openai::error_body(&err),
        Api::Anthropic => anthropic::error_body(&err, &request_id),
        Api::Gemini => gemini::error_body(&err),
    };
    let mut resp = (err.status, axum::Json(body)).into_response();
    let headers = resp.headers_mut();
    if let Some(name) = request_id_header(api) {
        insert_header(headers, name, &request_id);
    }
    if api == Api::Anthropic {
        insert_header(headers, HeaderName::from_static("x-should-retry"), {
            let retry = err.status == StatusCode::TOO_MANY_REQUESTS || err.status.is_server_error();
            if retry { "true" } else { "false" }
        });
    }
    for (name, value) in &err.headers {
        insert_header(headers, name.clone(), value);
    }
    resp
}

fn request_id_header(api: Api) -> Option<HeaderName> {
    match api {
        Api::Openai => Some(HeaderName::from_static("x-request-id")),
        Api::Anthropic => Some(HeaderName::from_static("request-id")),
        Api::Gemini => None,
    }
}

/// The content type of a JSON response (Gemini names its charset).
fn json_content_type(api: Api) -> &'static str {
    match api {
        Api::Gemini => "application/json; charset=UTF-8",
        Api::Openai | Api::Anthropic => "application/json",
    }
}

fn insert_header(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Checks the API key, if the scenario requires one.
fn check_auth(api: Api, scenario: &Scenario, headers: &HeaderMap, query: Option<&str>) -> Result<(), ApiError> {
    let Some(expected) = scenario.api_key.as_deref() else {
        return Ok(());
    };
    let unauthorized = |message: &str| {
        let mut e = ApiError::new(StatusCode::UNAUTHORIZED, message);
        if api == Api::Openai {
            e.kind = Some("invalid_request_error");
        }
        e
    };
    match api {
        Api::Openai => {
            let Some(value) = headers.get(header::AUTHORIZATION) else {
                return Err(unauthorized(
                    "You didn't provide an API key. You need to provide your API key in an \
                     Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                ));
            };
            let key = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
            if key == Some(expected) {
                Ok(())
            } else if scenario.echo_api_key {
                let msg = format!("Incorrect API key provided: {}.", key.unwrap_or_default());
                Err(unauthorized(&msg).code("invalid_api_key"))
            } else {
                Err(unauthorized("Incorrect API key provided.").code("invalid_api_key"))
            }
        }
        Api::Anthropic => match headers.get("x-api-key").map(HeaderValue::to_str) {
            None => Err(unauthorized("x-api-key header is required")),
            Some(Ok(key)) if key.trim() == expected => Ok(()),
            Some(Ok(key)) if scenario.echo_api_key => Err(unauthorized(&format!("invalid x-api-key: {key}"))),
            Some(_) => Err(unauthorized("invalid x-api-key")),
        },
        Api::Gemini => {
            // The header, else the `key` query parameter.
            let from_query = query
                .into_iter()
                .flat_map(|q| q.split('&'))
                .find_map(|kv| kv.strip_prefix("key="))
                .map(str::to_string);
            let key = match headers.get("x-goog-api-key") {
                Some(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                None => from_query,
            };
            match key {
                None => {
                    let mut e = ApiError::new(
                        StatusCode::FORBIDDEN,
                        "Method doesn't allow unregistered callers (callers without established identity). \
                         Please use API Key or other form of API consumer identity to call this API.",
                    );
                    e.code = Some("SERVICE_DISABLED");
                    Err(e)
                }
                Some(key) if key.trim() == expected => Ok(()),
                // Gemini answers a wrong key with a 400, not a 401.
                Some(key) => {
                    let message = if scenario.echo_api_key {
                        format!("API key not valid: {key}. Please pass a valid API key.")
                    } else {
                        "API key not valid. Please pass a valid API key.".to_string()
                    };
                    Err(ApiError::invalid(message).code("API_KEY_INVALID"))
                }
            }
        }
    }
}

/// Request headers worth logging, with credentials redacted.
fn logged_headers(headers: &HeaderMap) -> std::collections::BTreeMap<String, String> {
    headers
        .iter()
        .filter(|(name, _)| {
            let n = name.as_str();
            n.starts_with("anthropic-")
                || n.starts_with("openai-")
                || n.starts_with("x-")
                || n == "authorization"
                || n == "content-type"
                || n == "user-agent"
        })
        .map(|(name, value)| {
            let n = name.as_str();
            let v = if n == "authorization" || n == "x-api-key" || n == "x-goog-api-key" {
                "<redacted>".to_string()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (n.to_string(), v)
        })
        .collect()
}

/// `POST /v1/chat/completions`.
pub(crate) async fn openai_chat(State(state): State<AppState>, req: Request) -> Response {
    handle(state, Api::Openai, req).await
}

/// `POST /v1/messages`.
pub(crate) async fn anthropic_messages(State(state): State<AppState>, req: Request) -> Response {
    handle(state, Api::Anthropic, req).await
}

/// `POST /v1beta/models/{model}:{method}`: `generateContent` or `streamGenerateContent`.
pub(crate) async fn gemini_generate(State(state): State<AppState>, Path(target): Path<String>, req: Request) -> Response {
    let (model, method) = target.rsplit_once(':').unwrap_or((target.as_str(), ""));
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => {
            let message = format!("Method not found: models/{target}");
            return error_response(Api::Gemini, ApiError::new(StatusCode::NOT_FOUND, message));
        }
    };
    let sse = req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "alt=sse"));
    let target = GeminiTarget {
        model: model.to_string(),
        stream,
        json_array: stream && !sse,
    };
    handle_target(state, Api::Gemini, req, Some(target)).await
}

/// What a Gemini request's path says (the other APIs carry it in the body).
struct GeminiTarget {
    model: String,
    stream: bool,
    json_array: bool,
}

async fn handle(state: AppState, api: Api, req: Request) -> Response {
    handle_target(state, api, req, None).await
}

async fn handle_target(state: AppState, api: Api, req: Request, target: Option<GeminiTarget>) -> Response {
    let (parts, body) = req.into_parts();
    let kill = parts.extensions.get::<ConnectInfo<ConnKill>>().map(|ConnectInfo(k)| k.clone());
    let scenario = state.scenario();

    let checked = async {
        check_auth(api, &scenario, &parts.headers, parts.uri.query())?;
        if api == Api::Anthropic && !parts.headers.contains_key("anthropic-version") {
            return Err(ApiError::invalid("anthropic-version: header is required"));
        }
        let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("could not read request body: {e}")))?;
        let json: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid(format!("We could not parse the JSON body of your request. ({e})")))?;
        let parsed = match (api, &target) {
            (Api::Gemini, Some(t)) => gemini::parse(&json, scenario.is_strict(), &t.model, t.stream, t.json_array)?,
            (Api::Anthropic, _) => anthropic::parse(&json, scenario.is_strict())?,
            _ => openai::parse(&json, scenario.is_strict())?,
        };
        Ok((json, parsed))
    }
    .await;
    let (json, parsed) = match checked {
        Ok(v) => v,
        Err(err) => {
            state.note_rejected();
            return error_response(api, err);
        }
    };

    let config = scenario.config_for(&parsed.model);
    let log = LoggedRequest {
        api,
        model: parsed.model.clone(),
        stream: parsed.stream,
        headers: logged_headers(&parts.headers),
        body: json,
    };
    let (behaviour, guard) = state.begin_request(api, &parsed.model, parsed.stream, &config, scenario.seed, log);

    if config.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(config.latency_ms)).await;
    }

    let model = parsed.model.clone();
    let mut force_bad = None;
    let mut drop_after = None;
    let mut oversized = None;
    match behaviour {
        Behavior::Ok => {}
        Behavior::Bad { style } => force_bad = Some(style),
        Behavior::SlowFirstByte { delay_ms } => {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        Behavior::Status {
            status,
            retry_after_s,
            retry_after_ms,
            message,
        } => {
            state.note_fault(&model);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let message = message.unwrap_or_else(|| default_error_message(status).to_string());
            let mut err = ApiError::new(status, message);
            if api == Api::Gemini {
                let ms = retry_after_ms.or(retry_after_s.map(|s| s.saturating_mul(1000)));
                err.retry_delay_ms = ms.map(|ms| u32::try_from(ms).unwrap_or(u32::MAX));
                return error_response(api, err);
            }
            if let Some(ms) = retry_after_ms {
                err.headers.push((HeaderName::from_static("retry-after-ms"), ms.to_string()));
            }
            let secs = retry_after_s.or(retry_after_ms.map(|ms| ms.div_ceil(1000)));
            if let Some(s) = secs {
                err.headers.push((header::RETRY_AFTER, s.to_string()));
            }
            return error_response(api, err);
        }
        Behavior::Hang => {
            state.note_fault(&model);
            // Until the client gives up (hyper then drops this future) or the
            // server shuts down.
            state.shutdown.cancelled().await;
            if let Some(kill) = &kill {
                kill.kill();
            }
            return error_response(api, ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server shutting down"));
        }
        Behavior::Reset => {
            state.note_fault(&model);
            return reset_response(kill.as_ref());
        }
        Behavior::DropStream { after_chunks } => {
            state.note_fault(&model);
            drop_after = Some(after_chunks);
        }
        Behavior::Oversized { bytes } => {
            state.note_fault(&model);
            oversized = Some(bytes);
        }
        Behavior::MalformedJson => {
            state.note_fault(&model);
            let (answer, ctx_id) = synthesize(api, &parsed, &config, None);
            let ctx = render_ctx(&parsed, &answer, ctx_id);
            if parsed.stream {
                return malformed_stream(api, &ctx, guard);
            }
            let full = render_json(api, &ctx).to_string();
            let cut = &full.as_bytes()[..full.len() / 2];
            return raw_response(json_content_type(api), Bytes::copy_from_slice(cut));
        }
        Behavior::WrongContentType => {
            state.note_fault(&model);
            return raw_response(
                "text/html; charset=utf-8",
                Bytes::from_static(
                    b"<html><head><title>502 Bad Gateway</title></head>\
                      <body><center><h1>502 Bad Gateway</h1></center>\
                      <hr><center>nginx</center></body></html>\n",
                ),
            );
        }
    }

    let (answer, id) = synthesize(api, &parsed, &config, force_bad);
    state.note_answer(&model, answer.good, parsed.prompt.tokens(), answer.completion_tokens);
    let ctx = render_ctx(&parsed, &answer, id);
    let delay = Duration::from_millis(config.chunk_delay_ms);

    let mut resp = if parsed.stream {
        let mut frames = stream_frames(api, &ctx, drop_after);
        if let Some(target) = oversized {
            let current: usize = frames
                .iter()
                .map(|f| match f {
                    Frame::Data(b) => b.len(),
                    Frame::Abort => 0,
                })
                .sum();
            // An SSE comment line (": ...\n\n") is ignored by event parsers
            // but counts towards the body size.
            let pad = target.saturating_sub(current).saturating_sub(4);
            if pad > 0 {
                let comment = format!(": {}\n\n", "x".repeat(pad));
                frames.insert(0, Frame::Data(Bytes::from(comment)));
            }
        }
        let content_type = if parsed.json_array_stream {
            json_content_type(api)
        } else {
            "text/event-stream"
        };
        event_stream_response(frames, delay, guard, content_type)
    } else {
        let mut value = render_json(api, &ctx);
        if let Some(target) = oversized {
            pad_json(&mut value, target);
        }
        let bytes = Bytes::from(value.to_string());
        let body = match drop_after {
            // Non-streaming drop: promise the full length, send half, abort.
            Some(_) => {
                let half = bytes.slice(..bytes.len() / 2);
                ScriptedBody::new(vec![Frame::Data(half), Frame::Abort], delay, None).into_body()
            }
            None => Body::from(bytes.clone()),
        };
        let mut resp = Response::new(body);
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(json_content_type(api)));
        if drop_after.is_some() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        }
        drop(guard);
        resp
    };
    if let Some(name) = request_id_header(api) {
        let request_id = format!("req_{}", random_id());
        insert_header(resp.headers_mut(), name, &request_id);
    }
    resp
}

fn stream_frames(api: Api, ctx: &RenderCtx<'_>, drop_after: Option<usize>) -> Vec<Frame> {
    match api {
        Api::Openai => openai::stream_frames(ctx, drop_after),
        Api::Anthropic => anthropic::stream_frames(ctx, drop_after),
        Api::Gemini => gemini::stream_frames(ctx, drop_after),
    }
}

fn event_stream_response(frames: Vec<Frame>, delay: Duration, guard: InFlightGuard, content_type: &'static str) -> Response {
    let body = ScriptedBody::new(frames, delay, Some(guard)).into_body();
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// `malformed_json` on a stream: a well-formed event stream whose first event with output
/// (OpenAI: the second, after the role chunk; Anthropic: `content_block_start`, the second;
/// Gemini: the first, which already carries text) arrives with its JSON cut in half, so the
/// stream breaks before any output reaches the client. The rest follows unchanged.
fn malformed_stream(api: Api, ctx: &RenderCtx<'_>, guard: InFlightGuard) -> Response {
    let mut frames = stream_frames(api, ctx, None);
    let broken = match api {
        Api::Openai | Api::Anthropic => 1,
        Api::Gemini => 0,
    };
    if let Some(Frame::Data(event)) = frames.get_mut(broken) {
        *event = truncate_event_json(event);
    }
    let mut resp = event_stream_response(frames, Duration::ZERO, guard, "text/event-stream");
    if let Some(name) = request_id_header(api) {
        insert_header(resp.headers_mut(), name, &format!("req_{}", random_id()));
    }
    resp
}

/// `...data: {"a": ...}\n\n` -> `...data: {"a": .\n\n` (the JSON of the last `data:` line cut in
/// half, the event still terminated).
fn truncate_event_json(event: &Bytes) -> Bytes {
    let text = String::from_utf8_lossy(event);
    let body = text.trim_end_matches(['\r', '\n']);
    let json_at = body.rfind("data: ").map_or(0, |i| i + "data: ".len());
    let mut cut = json_at + (body.len() - json_at) / 2;
    while !body.is_char_boundary(cut) {
        cut -= 1;
    }
    Bytes::from(format!("{}\n\n", &body[..cut]))
}

fn synthesize(
    api: Api,
    parsed: &Parsed,
    config: &super::scenario::ModelConfig,
    force_bad: Option<Option<super::scenario::BadAnswer>>,
) -> (Answer, String) {
    let gen_req = GenRequest {
        model: &parsed.model,
        config,
        prompt: &parsed.prompt,
        format: parsed.format.clone(),
        max_tokens: parsed.max_tokens,
        stop: parsed.stop.clone(),
        tool: parsed.tool.clone(),
        force_bad,
    };
    let id = match api {
        Api::Openai => format!("chatcmpl-{}", random_id()),
        Api::Anthropic => format!("msg_{}", random_id()),
        // Gemini's `responseId` (no prefix).
        Api::Gemini => random_id(),
    };
    (answer::generate(&gen_req), id)
}

fn render_ctx<'a>(parsed: &'a Parsed, answer: &'a Answer, id: String) -> RenderCtx<'a> {
    RenderCtx {
        parsed,
        answer,
        id,
        created: unix_now(),
    }
}

fn render_json(api: Api, ctx: &RenderCtx<'_>) -> Value {
    match api {
        Api::Openai => openai::render(ctx),
        Api::Anthropic => anthropic::render(ctx),
        Api::Gemini => gemini::render(ctx),
    }
}

/// Adds an `x_fake_padding` field so the serialized document is exactly
/// `target` bytes (or unchanged if it is already larger).
fn pad_json(value: &mut Value, target: usize) {
    let Value::Object(map) = value else { return };
    map.insert("x_fake_padding".into(), Value::String(String::new()));
    let base = Value::Object(map.clone()).to_string().len();
    if target > base {
        map.insert("x_fake_padding".into(), Value::String("x".repeat(target - base)));
    }
}

fn raw_response(content_type: &'static str, body: Bytes) -> Response {
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// See the `net` module docs: with a kill switch the connection is reset
/// before any byte is written; without one, the body fails immediately.
fn reset_response(kill: Option<&ConnKill>) -> Response {
    match kill {
        Some(kill) => {
            kill.kill();
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        None => {
            let body = ScriptedBody::new(vec![Frame::Abort], Duration::ZERO, None).into_body();
            let mut resp = Response::new(body);
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
    }
}

fn default_error_message(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "Invalid request.",
        401 => "Invalid authentication.",
        403 => "Permission denied.",
        404 => "The requested resource was not found.",
        408 => "Request timed out.",
        413 => "Request too large.",
        429 => "Rate limit reached for requests. Please try again later.",
        500 => "The server had an error while processing your request.",
        502 => "Bad gateway.",
        503 => "The server is overloaded or not ready yet.",
        504 => "Gateway timeout.",
        529 => "Overloaded",
        _ => "Fake provider error.",
    }
}
