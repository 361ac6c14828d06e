//! `POST /v1/chat/completions` and `POST /v1/route`.
//!
//! The handler's steps, in order: read the body (bounded by `server.max_body_bytes`), parse and
//! validate it as an OpenAI request, read the hints (`x-ladder-task` header, `ladder` body field),
//! score the prompt, decide, execute the chain, and log one decision record. The record is
//! committed before the response is released ([`RecordGuard`] also logs requests whose client
//! went away, so no path loses its record). Streaming responses are pumped by a task that owns
//! the record until the stream ends.

use super::SharedState;
use crate::error::ApiError;
use crate::executor::StartedStream;
use crate::router::{self, Decision, RouteError, RouteRequest, Scores};
use crate::store::{DecisionRecord, Store};
use crate::task::Task;
use crate::wire::{ChatChunk, ChatRequest, Role, Usage, estimate_tokens};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::time::{Duration, Instant};

/// Largest `max_tokens` accepted (no model produces more in one call).
const MAX_OUTPUT_TOKENS_LIMIT: u64 = 1_000_000;

/// A parsed, validated request and its hints.
pub struct Parsed {
    pub req: ChatRequest,
    pub route: RouteRequest,
}

/// After deciding on a 413, keep reading (and discarding) up to this much of the body, for at
/// most [`DRAIN_MAX_TIME`], so that a client still uploading reads the 413 instead of a reset.
const DRAIN_MAX_BYTES: usize = 64 * 1024 * 1024;
const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

/// Read the body with the configured limit: 413 past it.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("request body exceeds the limit of {limit} bytes (server.max_body_bytes)"),
        )
    };
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid_request("invalid_body", format!("could not read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            drop(buf);
            let mut drained = 0usize;
            let _ = tokio::time::timeout(DRAIN_MAX_TIME, async {
                while drained < DRAIN_MAX_BYTES
                    && let Some(Ok(c)) = stream.next().await
                {
                    drained += c.len();
                }
            })
            .await;
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A body declared as something other than JSON is refused (415); no content type is accepted.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(v) = headers.get(axum::http::header::CONTENT_TYPE) else {
        return Ok(());
    };
    let media = v.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media == "application/json" || (media.starts_with("application/") && media.ends_with("+json")) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request_error",
        "unsupported_media_type",
        format!(
            "the request body must be JSON (content-type: application/json), got content-type '{}'",
            String::from_utf8_lossy(v.as_bytes())
        ),
    )
    .with_param("content-type"))
}

/// Parse and validate a chat request; every failure is a 4xx naming the problem.
pub fn parse(state: &SharedState, headers: &HeaderMap, bytes: &[u8]) -> Result<Parsed, ApiError> {
    check_content_type(headers)?;
    let req: ChatRequest = serde_json::from_slice(bytes).map_err(|e| {
        let msg = if e.is_syntax() || e.is_eof() {
            format!("the request body is not valid JSON: {e}")
        } else {
            format!("the request body does not match the chat completions schema: {e}")
        };
        ApiError::invalid_request("invalid_request_body", msg)
    })?;
    if req.model.trim().is_empty() {
        return Err(ApiError::invalid_request("missing_model", "'model' must be a catalogue model name or 'auto'").with_param("model"));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid_request("empty_messages", "'messages' must contain at least one message").with_param("messages"));
    }
    for (i, m) in req.messages.iter().enumerate() {
        if matches!(m.role, Role::User | Role::System | Role::Developer) && m.content.is_none() {
            return Err(ApiError::invalid_request(
                "missing_content",
                format!("messages[{i}].content is required for role {:?}", m.role).to_lowercase(),
            )
            .with_param(format!("messages[{i}].content")));
        }
        if m.role == Role::Tool && m.tool_call_id.is_none() {
            return Err(ApiError::invalid_request(
                "missing_tool_call_id",
                format!("messages[{i}].tool_call_id is required for role tool"),
            )
            .with_param(format!("messages[{i}].tool_call_id")));
        }
    }
    for (field, v) in [("max_tokens", req.max_tokens), ("max_completion_tokens", req.max_completion_tokens)] {
        if let Some(n) = v
            && (n == 0 || n > MAX_OUTPUT_TOKENS_LIMIT)
        {
            return Err(ApiError::invalid_request(
                "invalid_value",
                format!("'{field}' must be between 1 and {MAX_OUTPUT_TOKENS_LIMIT}, got {n}"),
            )
            .with_param(field));
        }
    }
    if let Some(t) = req.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(
            ApiError::invalid_request("invalid_value", format!("'temperature' must be between 0 and 2, got {t}")).with_param("temperature"),
        );
    }
    if let Some(p) = req.top_p
        && !(0.0..=1.0).contains(&p)
    {
        return Err(ApiError::invalid_request("invalid_value", format!("'top_p' must be between 0 and 1, got {p}")).with_param("top_p"));
    }
    if let Some(f) = &req.response_format
        && !matches!(f.kind.as_str(), "text" | "json_object" | "json_schema")
    {
        return Err(ApiError::invalid_request(
            "invalid_value",
            format!("response_format.type '{}' is not one of text, json_object, json_schema", f.kind),
        )
        .with_param("response_format.type"));
    }

    // Hints: the body field wins over the header when both name a task.
    let header_task = match headers.get("x-ladder-task") {
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| ApiError::invalid_request("invalid_task", "x-ladder-task is not valid text").with_param("x-ladder-task"))?;
            Some(
                s.parse::<Task>()
                    .map_err(|e| ApiError::invalid_request("invalid_task", e.to_string()).with_param("x-ladder-task"))?,
            )
        }
        None => None,
    };
    let hints = req.ladder.clone().unwrap_or_default();
    let body_task = match &hints.task {
        Some(s) => Some(
            s.parse::<Task>()
                .map_err(|e| ApiError::invalid_request("invalid_task", e.to_string()).with_param("ladder.task"))?,
        ),
        None => None,
    };
    if let Some(c) = hints.max_cost_usd
        && !(c > 0.0 && c.is_finite())
    {
        return Err(
            ApiError::invalid_request("invalid_value", format!("ladder.max_cost_usd must be a positive number, got {c}"))
                .with_param("ladder.max_cost_usd"),
        );
    }
    if let Some(q) = hints.min_quality
        && !(q > 0.0 && q < 1.0)
    {
        return Err(ApiError::invalid_request(
            "invalid_value",
            format!("ladder.min_quality must be strictly between 0 and 1, got {q}"),
        )
        .with_param("ladder.min_quality"));
    }
    if let Some(models) = &hints.models {
        if models.is_empty() {
            return Err(ApiError::invalid_request("invalid_value", "ladder.models must not be empty").with_param("ladder.models"));
        }
        for m in models {
            if state.config.model(m).is_none() {
                return Err(ApiError::invalid_request(
                    "model_not_found",
                    format!("ladder.models names '{m}', which is not in the catalogue"),
                )
                .with_param("ladder.models"));
            }
        }
    }
    let route = RouteRequest {
        model: req.model.clone(),
        task_hint: body_task.or(header_task),
        max_cost_usd: hints.max_cost_usd,
        min_quality: hints.min_quality,
        allowed_models: hints.models.clone(),
        needs_tools: req.tools.as_ref().is_some_and(|t| !t.is_empty()),
        needs_vision: req.has_image(),
        needs_json: req.wants_json(),
        prompt_tokens: estimate_tokens(&req),
        max_output_tokens: req.max_output_tokens(),
    };
    Ok(Parsed { req, route })
}

fn route_error(e: RouteError) -> ApiError {
    match &e {
        RouteError::UnknownModel(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "model_not_found", e.to_string()).with_param("model")
        }
        RouteError::NoCandidate {
            context_exceeded: true, ..
        } => ApiError::invalid_request("context_length_exceeded", e.to_string()).with_param("messages"),
        RouteError::NoCandidate { .. } => ApiError::invalid_request("no_eligible_model", e.to_string()),
    }
}

/// Score and decide (no upstream call).
async fn score_and_decide(state: &SharedState, parsed: &Parsed) -> (Scores, Option<Vec<f32>>, Result<Decision, RouteError>) {
    // A prompt no model can take is refused without spending classifier time on it.
    if state.config.models.iter().all(|m| parsed.route.prompt_tokens > m.context_window) {
        let fallback = parsed.route.task_hint.unwrap_or(state.config.routing.default_task);
        let scores = Scores::for_task(
            fallback,
            crate::router::ScoreSource::Degraded {
                reason: "not scored: the prompt exceeds every model's context window".into(),
            },
        );
        let decision = router::decide(&state.config, &parsed.route, &scores);
        return (scores, None, decision);
    }
    let (scores, embedding) = state
        .scorer
        .score(
            &parsed.req.routing_text(),
            parsed.route.task_hint,
            state.config.routing.default_task,
        )
        .await;
    let decision = router::decide(&state.config, &parsed.route, &scores);
    (scores, embedding, decision)
}

/// Holds a request's record until it is logged; logs it from `Drop` if the handler is cancelled
/// (the client went away), so that every request leaves exactly one record.
pub struct RecordGuard {
    record: Option<DecisionRecord>,
    store: Store,
    t0: Instant,
    /// The request's reservation against its API key's limits, settled with the record.
    reservation: Option<crate::auth::Reservation>,
}

impl RecordGuard {
    fn new(state: &SharedState, parsed: &Parsed, t0: Instant) -> RecordGuard {
        let transcript = parsed.req.transcript();
        let sha = hex::encode(Sha256::digest(transcript.as_bytes()));
        let now = time::OffsetDateTime::now_utc();
        let record = DecisionRecord {
            id: format!("dec_{}", uuid::Uuid::new_v4().simple()),
            ts_ms: (now.unix_timestamp_nanos() / 1_000_000) as i64,
            created_at: now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            requested_model: parsed.req.model.clone(),
            stream: parsed.req.is_stream(),
            hints: json!({
                "task": parsed.route.task_hint.map(|t| t.as_str()),
                "max_cost_usd": parsed.route.max_cost_usd,
                "min_quality": parsed.route.min_quality,
                "models": parsed.route.allowed_models,
            }),
            outcome: "client_disconnected".into(),
            http_status: 499,
            prompt_tokens_estimate: parsed.route.prompt_tokens,
            needs: [
                (parsed.route.needs_tools, "tools"),
                (parsed.route.needs_vision, "vision"),
                (parsed.route.needs_json, "json"),
            ]
            .iter()
            .filter(|(needed, _)| *needed)
            .map(|(_, cap)| cap.to_string())
            .collect(),
            max_output_tokens: parsed.route.max_output_tokens,
            prompt: state.config.store.keep_prompts.then_some(transcript),
            prompt_sha256: sha,
            ..Default::default()
        };
        RecordGuard {
            record: Some(record),
            store: state.store.clone(),
            t0,
            reservation: None,
        }
    }

    fn id(&self) -> String {
        self.record.as_ref().map(|r| r.id.clone()).unwrap_or_default()
    }

    fn rec(&mut self) -> &mut DecisionRecord {
        self.record.as_mut().expect("record taken only by finish")
    }

    fn set_decision(&mut self, scores: Scores, embedding: Option<Vec<f32>>, decision: &Decision) {
        let r = self.rec();
        r.task = Some(decision.task.to_string());
        r.task_source = Some(format!("{:?}", decision.task_source).to_lowercase());
        r.threshold = Some(decision.threshold);
        r.candidates = decision.candidates.clone();
        r.chain = decision.chain.clone();
        r.reason = decision.reason.clone();
        r.scores = Some(scores);
        r.embedding = embedding;
    }

    /// Fill in the outcome and commit the record (waits for the group commit unless
    /// `store.wait_for_commit = false`).
    async fn finish(mut self, outcome: &str, http_status: u16, error: Option<String>) {
        let Some(mut r) = self.record.take() else { return };
        finalize(&mut r, outcome, http_status, error, self.t0);
        if let Some(res) = self.reservation.take() {
            res.settle(&r);
        }
        self.store.commit(r).await;
    }
}

fn finalize(r: &mut DecisionRecord, outcome: &str, http_status: u16, error: Option<String>, t0: Instant) {
    r.outcome = outcome.to_string();
    r.http_status = http_status;
    r.error = error;
    r.latency_ms = t0.elapsed().as_millis() as u64;
    r.total_cost_usd = r.attempts.iter().map(|a| a.cost_usd).sum();
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            let outcome = r.outcome.clone();
            let status = r.http_status;
            finalize(
                &mut r,
                &outcome,
                status,
                Some("the client closed the connection before the response".into()),
                self.t0,
            );
            if let Some(res) = self.reservation.take() {
                res.settle(&r);
            }
            self.store.append_detached(r);
        }
    }
}

/// `success` when the first attempted rung answered, `escalated` when a later one did. The
/// answering attempt is the last one; retries on that same model (after a 429, say) are still a
/// success, a rung tried or skipped before it makes the request escalated.
fn success_outcome(record: &DecisionRecord, failed_check: Option<&str>) -> &'static str {
    let answered = record.attempts.last().map(|a| a.model.as_str());
    if failed_check.is_some() {
        "degraded"
    } else if record.attempts.iter().any(|a| Some(a.model.as_str()) != answered) {
        "escalated"
    } else {
        "success"
    }
}

fn ladder_headers(headers: &mut HeaderMap, id: &str, model: Option<&str>, attempts: usize) {
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert("x-ladder-decision-id", v);
    }
    if let Some(m) = model
        && let Ok(v) = HeaderValue::from_str(m)
    {
        headers.insert("x-ladder-model", v);
    }
    headers.insert("x-ladder-attempts", HeaderValue::from(attempts));
}

fn error_response(err: ApiError, id: &str, attempts: usize) -> Response {
    let mut resp = err.into_response();
    ladder_headers(resp.headers_mut(), id, None, attempts);
    resp
}

pub async fn chat_completions(
    State(state): State<SharedState>,
    principal: Option<axum::Extension<crate::auth::Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let t0 = Instant::now();
    let principal = principal.map_or(crate::auth::Principal::Open, |p| p.0);
    let bytes = match read_body(body, state.config.server.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let mut parsed = match parse(&state, &headers, &bytes) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    drop(bytes);
    principal.restrict(&mut parsed.route);
    let mut guard = RecordGuard::new(&state, &parsed, t0);
    guard.rec().key_name = principal.name();
    let id = guard.id();
    let (scores, embedding, decision) = score_and_decide(&state, &parsed).await;
    let decision = match decision {
        Ok(d) => d,
        Err(e) => {
            guard.rec().scores = Some(scores);
            let err = route_error(e);
            guard.finish("rejected", err.status.as_u16(), Some(err.message.clone())).await;
            return error_response(err, &id, 0);
        }
    };
    guard.set_decision(scores, embedding, &decision);
    match crate::auth::admit(&principal, &state.config, &parsed.route, &decision) {
        Ok(reservation) => guard.reservation = reservation,
        Err(refused) => {
            guard
                .finish("rejected", refused.status.as_u16(), Some(refused.message.clone()))
                .await;
            return error_response(refused, &id, 0);
        }
    }

    if parsed.req.is_stream() {
        return stream_response(state, parsed.req, decision, guard, t0).await;
    }

    let mut attempts = Vec::new();
    let result = state.executor.complete(&parsed.req, &decision.chain, &mut attempts, t0).await;
    let n = attempts.len();
    guard.rec().attempts = attempts;
    match result {
        Ok(done) => {
            let outcome = success_outcome(guard.rec(), done.failed_check.as_deref());
            {
                let r = guard.rec();
                r.final_model = Some(done.model.clone());
            }
            let body = match serde_json::to_vec(&done.completion) {
                Ok(b) => b,
                Err(e) => {
                    let err = ApiError::internal(format!("could not encode the response: {e}"));
                    guard.finish("failed", 500, Some(err.message.clone())).await;
                    return error_response(err, &id, n);
                }
            };
            guard
                .finish(
                    outcome,
                    200,
                    done.failed_check
                        .map(|k| format!("every rung failed its checks; last failure: {k}")),
                )
                .await;
            let mut resp = (StatusCode::OK, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response();
            ladder_headers(resp.headers_mut(), &id, Some(&done.model), n);
            resp
        }
        Err(err) => {
            guard.finish("failed", err.status.as_u16(), Some(err.message.clone())).await;
            error_response(err, &id, n)
        }
    }
}

/// Run the chain until a stream produces output, then pump it to the client from a task.
async fn stream_response(state: SharedState, req: ChatRequest, decision: Decision, mut guard: RecordGuard, t0: Instant) -> Response {
    let id = guard.id();
    let mut attempts = Vec::new();
    let started = state.executor.start_stream(&req, &decision.chain, &mut attempts, t0).await;
    let n = attempts.len();
    guard.rec().attempts = attempts;
    let started = match started {
        Ok(s) => s,
        Err(err) => {
            guard.finish("failed", err.status.as_u16(), Some(err.message.clone())).await;
            return error_response(err, &id, n);
        }
    };
    let model = started.model.clone();
    guard.rec().final_model = Some(model.clone());
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(32);
    let idle = Duration::from_millis(state.config.timeouts.idle_ms);
    tokio::spawn(pump(state.clone(), started, guard, tx, include_usage, idle));
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(axum::http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    ladder_headers(h, &id, Some(&model), n);
    resp
}

fn sse(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Forward chunks to the client; when the stream ends (well or badly) log the record.
async fn pump(
    state: SharedState,
    started: StartedStream,
    mut guard: RecordGuard,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, Infallible>>,
    include_usage: bool,
    idle: Duration,
) {
    let StartedStream {
        model,
        head,
        mut rest,
        attempt_index,
    } = started;
    let mut usage: Option<Usage> = None;
    let mut output_chars = 0usize;
    let send = |chunk: &mut ChatChunk, usage: &mut Option<Usage>, output_chars: &mut usize| -> Option<Bytes> {
        chunk.model.clone_from(&model);
        if let Some(u) = chunk.usage {
            *usage = Some(u);
        }
        for c in &chunk.choices {
            *output_chars += c.delta.content.as_ref().map_or(0, |s| s.len());
        }
        if chunk.choices.is_empty() && chunk.usage.is_some() && !include_usage {
            return None;
        }
        if !include_usage {
            chunk.usage = None;
        }
        serde_json::to_vec(chunk).ok().map(|b| sse(&b))
    };
    let mut client_gone = false;
    for mut chunk in head {
        if let Some(bytes) = send(&mut chunk, &mut usage, &mut output_chars)
            && tx.send(Ok(bytes)).await.is_err()
        {
            client_gone = true;
            break;
        }
    }
    let mut failure: Option<String> = None;
    while !client_gone {
        match tokio::time::timeout(idle, rest.next()).await {
            Ok(Some(Ok(mut chunk))) => {
                if let Some(bytes) = send(&mut chunk, &mut usage, &mut output_chars)
                    && tx.send(Ok(bytes)).await.is_err()
                {
                    client_gone = true;
                }
            }
            Ok(Some(Err(e))) => {
                failure = Some(e.to_string());
                break;
            }
            Ok(None) => break,
            Err(_) => {
                failure = Some(format!("no data from the upstream for {} ms", idle.as_millis()));
                break;
            }
        }
    }
    drop(rest);
    let usage = usage.unwrap_or_else(|| Usage::new(guard.rec().prompt_tokens_estimate, output_chars.div_ceil(4) as u64));
    let cost = state.executor.cost(&model, &usage);
    let guard_elapsed_ms = guard.t0.elapsed().as_millis() as u64;
    {
        let r = guard.rec();
        if let Some(a) = r.attempts.get_mut(attempt_index) {
            a.prompt_tokens = usage.prompt_tokens;
            a.completion_tokens = usage.completion_tokens;
            a.cost_usd = cost;
            // The attempt lasted until its stream ended, not just until the first output.
            a.latency_ms = (guard_elapsed_ms.saturating_sub(a.started_ms)).max(a.latency_ms);
            if let Some(f) = &failure {
                a.status = "error".into();
                a.error_kind = Some("stream_error".into());
                a.reason = Some(f.clone());
            }
        }
    }
    if client_gone {
        guard
            .finish("client_disconnected", 499, Some("the client closed the stream".into()))
            .await;
        return;
    }
    match failure {
        None => {
            let outcome = success_outcome(guard.rec(), None);
            guard.finish(outcome, 200, None).await;
            let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
        }
        Some(msg) => {
            let err = ApiError::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                "stream_interrupted",
                format!("the upstream stream from '{model}' failed after output started: {msg}"),
            );
            guard.finish("stream_failed", 200, Some(err.message.clone())).await;
            if let Ok(body) = serde_json::to_vec(&err.body()) {
                let _ = tx.send(Ok(sse(&body))).await;
            }
        }
    }
}

/// `POST /v1/route`: the decision Ladder would make, with the numbers behind it.
pub async fn route_only(
    State(state): State<SharedState>,
    principal: Option<axum::Extension<crate::auth::Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match read_body(body, state.config.server.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let mut parsed = match parse(&state, &headers, &bytes) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if let Some(p) = principal {
        p.0.restrict(&mut parsed.route);
    }
    let (scores, _, decision) = score_and_decide(&state, &parsed).await;
    match decision {
        Ok(d) => axum::Json(route_json(&scores, &d)).into_response(),
        Err(e) => route_error(e).into_response(),
    }
}

/// The JSON view of a decision (shared with `ladder route`).
pub fn route_json(scores: &Scores, d: &Decision) -> serde_json::Value {
    let probs: serde_json::Map<String, serde_json::Value> = Task::ALL
        .iter()
        .zip(&scores.task_probs)
        .map(|(t, p)| (t.to_string(), json!((p * 1e4).round() / 1e4)))
        .collect();
    json!({
        "model": d.chain.first(),
        "chain": d.chain,
        "mode": d.mode,
        "task": d.task,
        "task_source": d.task_source,
        "task_probs": probs,
        "difficulty": d.difficulty,
        "threshold": d.threshold,
        "low_confidence": scores.low_confidence,
        "low_confidence_reasons": scores.low_confidence_reasons,
        "ood_distance": scores.ood_distance,
        "truncated": scores.truncated,
        "score_source": scores.source,
        "heads_version": scores.heads_version,
        "candidates": d.candidates,
        "reason": d.reason,
    })
}

/// The decision for a request body under `config`, without a server (for `ladder route`).
pub async fn route_decision(config: crate::config::Config, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let config = std::sync::Arc::new(config);
    let scorer = crate::classifier::Scorer::from_config(&config.classifier, config.routing.min_task_confidence)?;
    let mut req: ChatRequest = serde_json::from_value(body.clone())?;
    let task_hint = match req.ladder.as_mut().and_then(|h| h.task.take()) {
        Some(t) => Some(t.parse::<Task>()?),
        None => None,
    };
    let route = RouteRequest {
        model: req.model.clone(),
        task_hint,
        min_quality: req.ladder.as_ref().and_then(|h| h.min_quality),
        prompt_tokens: estimate_tokens(&req),
        ..Default::default()
    };
    let (scores, _) = scorer.score(&req.routing_text(), task_hint, config.routing.default_task).await;
    let d = router::decide(&config, &route, &scores).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(route_json(&scores, &d))
}
