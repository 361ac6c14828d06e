//! The executor: runs a decision's chain against the upstreams.
//!
//! For each rung of the chain, in order: skip it if its circuit breaker is open; attempt it with a
//! per-attempt timeout inside the chain's overall deadline; on a retryable failure (429, 5xx,
//! connection error) retry the same model after a backoff that honours `retry-after` (bounded by
//! `retries.max_retry_after_ms`); on other failures, or when retries are used up, move up the
//! chain. A successful response is checked (empty content, truncation the caller did not ask
//! for, invalid JSON when JSON was asked for, refusals); a failed check also moves up the chain.
//! Every attempt and skip is appended to the caller's attempt list, which becomes part of the
//! decision record.
//!
//! Streaming follows the same chain, but a stream is only committed to once it has produced its
//! first output chunk: failures before that fall back like any other; after it, the server ends
//! the client's stream with an explicit error event (see `server::stream`).

use crate::config::{CheckConfig, Config, ModelConfig};
use crate::error::ApiError;
use crate::providers::{ChunkStream, Provider, ProviderError};
use crate::store::Attempt;
use crate::wire::{ChatChunk, ChatCompletion, ChatRequest, Usage};
use axum::http::StatusCode;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Per-model circuit breakers: after `failure_threshold` consecutive failed attempts a model is
/// skipped for `cooldown_ms`; then one probe request is let through (half-open). A success closes
/// the breaker, a failed probe opens it again. A probe that ends without a verdict (its client went
/// away, or the upstream blamed the request) holds the probe slot for at most another cooldown.
pub struct Breakers {
    threshold: u32,
    cooldown: Duration,
    states: Mutex<HashMap<String, BreakerState>>,
}

#[derive(Default, Clone)]
struct BreakerState {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    /// When the half-open probe in flight was let through.
    probe_since: Option<Instant>,
}

impl Breakers {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breakers {
            threshold: threshold.max(1),
            cooldown,
            states: Mutex::new(HashMap::new()),
        }
    }

    /// May `model` be attempted now? Err carries the reason to record.
    pub fn allow(&self, model: &str) -> Result<(), String> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let Some(st) = states.get_mut(model) else { return Ok(()) };
        match st.open_until {
            None => Ok(()),
            Some(until) if Instant::now() < until => Err(format!(
                "circuit open for {} ms more",
                until.saturating_duration_since(Instant::now()).as_millis()
            )),
            Some(_) if st.probe_since.is_some_and(|t| t.elapsed() < self.cooldown) => {
                Err("circuit half-open: a probe request is in flight".into())
            }
            Some(_) => {
                st.probe_since = Some(Instant::now());
                Ok(())
            }
        }
    }

    pub fn record_success(&self, model: &str) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(st) = states.get_mut(model) {
            *st = BreakerState::default();
        }
    }

    pub fn record_failure(&self, model: &str) {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let st = states.entry(model.to_string()).or_default();
        st.consecutive_failures += 1;
        if st.probe_since.is_some() || st.consecutive_failures >= self.threshold {
            st.open_until = Some(Instant::now() + self.cooldown);
            st.probe_since = None;
        }
    }

    /// `closed`, `open` or `half_open`, for `/v1/models` and health output.
    pub fn state(&self, model: &str) -> &'static str {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        match states.get(model).and_then(|s| s.open_until) {
            None => "closed",
            Some(until) if Instant::now() < until => "open",
            Some(_) => "half_open",
        }
    }
}

/// A non-streaming result.
pub struct Completed {
    pub completion: ChatCompletion,
    pub model: String,
    /// Set when every rung failed its checks and this is the last response (outcome `degraded`).
    pub failed_check: Option<String>,
}

/// A stream that produced its first output and is now committed to.
pub struct StartedStream {
    pub model: String,
    /// Chunks received up to and including the first one with output.
    pub head: Vec<ChatChunk>,
    /// The rest of the upstream stream.
    pub rest: ChunkStream,
    /// Index of this attempt in the attempt list (updated when the stream ends).
    pub attempt_index: usize,
}

pub struct Executor {
    config: Arc<Config>,
    providers: HashMap<String, Provider>,
    pub breakers: Breakers,
}

/// What [`Executor::gate`] allows.
enum Gate {
    Go { now: Instant, budget: Duration, started_ms: u64 },
    Skip,
    Deadline,
}

enum AttemptResult<T> {
    Ok(T),
    Failed(ProviderError),
}

impl Executor {
    pub fn new(config: Arc<Config>, providers: HashMap<String, Provider>) -> Self {
        let breakers = Breakers::new(config.breaker.failure_threshold, Duration::from_millis(config.breaker.cooldown_ms));
        Executor {
            config,
            providers,
            breakers,
        }
    }

    /// Build providers for every configured upstream.
    pub fn from_config(config: Arc<Config>) -> anyhow::Result<Self> {
        let http = crate::providers::http_client(&config.timeouts)?;
        let mut providers = HashMap::new();
        for p in &config.providers {
            providers.insert(p.name.clone(), Provider::new(p, http.clone())?);
        }
        Ok(Self::new(config, providers))
    }

    fn model(&self, name: &str) -> Option<(&ModelConfig, &Provider)> {
        let m = self.config.model(name)?;
        let p = self.providers.get(&m.provider)?;
        Some((m, p))
    }

    /// Run the chain for a non-streaming request.
    pub async fn complete(
        &self,
        req: &ChatRequest,
        chain: &[String],
        attempts: &mut Vec<Attempt>,
        t0: Instant,
    ) -> Result<Completed, ApiError> {
        let deadline = t0 + Duration::from_millis(self.config.timeouts.total_ms);
        let mut last_error: Option<ProviderError> = None;
        let mut degraded: Option<(ChatCompletion, String, String)> = None;
        for name in chain {
            let Some((model, provider)) = self.model(name) else { continue };
            let mut tries = 0u32;
            loop {
                let (now, budget, started_ms) = match self.gate(model, attempts, t0, deadline, self.config.timeouts.attempt_ms) {
                    Gate::Go { now, budget, started_ms } => (now, budget, started_ms),
                    Gate::Skip => break,
                    Gate::Deadline => return Err(self.exhausted(attempts, last_error, true, t0)),
                };
                let result = match tokio::time::timeout(budget, provider.complete(req, model)).await {
                    Ok(Ok(c)) => AttemptResult::Ok(c),
                    Ok(Err(e)) => AttemptResult::Failed(e),
                    Err(_) => AttemptResult::Failed(ProviderError::Timeout {
                        phase: if budget.as_millis() as u64 >= self.config.timeouts.attempt_ms {
                            "attempt"
                        } else {
                            "deadline"
                        },
                    }),
                };
                let latency_ms = now.elapsed().as_millis() as u64;
                match result {
                    AttemptResult::Ok(mut completion) => {
                        self.breakers.record_success(name);
                        completion.model = name.clone();
                        let usage = completion.usage.unwrap_or_default();
                        let mut attempt = Attempt {
                            model: name.clone(),
                            provider: model.provider.clone(),
                            status: "ok".into(),
                            http_status: Some(200),
                            started_ms,
                            latency_ms,
                            prompt_tokens: usage.prompt_tokens,
                            completion_tokens: usage.completion_tokens,
                            cost_usd: model.cost_usd(usage.prompt_tokens, usage.completion_tokens),
                            ..Default::default()
                        };
                        match check_completion(&self.config.checks, req, &completion) {
                            None => {
                                attempts.push(attempt);
                                return Ok(Completed {
                                    completion,
                                    model: name.clone(),
                                    failed_check: None,
                                });
                            }
                            Some((kind, why)) => {
                                attempt.status = "check_failed".into();
                                attempt.error_kind = Some(kind.into());
                                attempt.reason = Some(why.clone());
                                attempts.push(attempt);
                                degraded = Some((completion, name.clone(), kind.to_string()));
                                break;
                            }
                        }
                    }
                    AttemptResult::Failed(err) => {
                        if err.trips_breaker() {
                            self.breakers.record_failure(name);
                        }
                        attempts.push(error_attempt(model, &err, started_ms, latency_ms));
                        if !err.escalates() {
                            return Err(upstream_client_error(&err));
                        }
                        let retry = self.retry_delay(&err, tries, deadline);
                        last_error = Some(err);
                        match retry {
                            Some(delay) => {
                                tries += 1;
                                tokio::time::sleep(delay).await;
                            }
                            None => break,
                        }
                    }
                }
            }
        }
        if let Some((completion, model, kind)) = degraded {
            return Ok(Completed {
                completion,
                model,
                failed_check: Some(kind),
            });
        }
        Err(self.exhausted(attempts, last_error, false, t0))
    }

    /// Run the chain for a streaming request until one upstream produces output.
    pub async fn start_stream(
        &self,
        req: &ChatRequest,
        chain: &[String],
        attempts: &mut Vec<Attempt>,
        t0: Instant,
    ) -> Result<StartedStream, ApiError> {
        let deadline = t0 + Duration::from_millis(self.config.timeouts.total_ms);
        let mut last_error: Option<ProviderError> = None;
        for name in chain {
            let Some((model, provider)) = self.model(name) else { continue };
            let mut tries = 0u32;
            loop {
                let (now, budget, started_ms) = match self.gate(model, attempts, t0, deadline, self.config.timeouts.first_byte_ms) {
                    Gate::Go { now, budget, started_ms } => (now, budget, started_ms),
                    Gate::Skip => break,
                    Gate::Deadline => return Err(self.exhausted(attempts, last_error, true, t0)),
                };
                let result = tokio::time::timeout(budget, first_output(provider, req, model)).await;
                let latency_ms = now.elapsed().as_millis() as u64;
                let err = match result {
                    Ok(Ok((head, rest))) => {
                        self.breakers.record_success(name);
                        attempts.push(Attempt {
                            model: name.clone(),
                            provider: model.provider.clone(),
                            status: "ok".into(),
                            http_status: Some(200),
                            started_ms,
                            latency_ms,
                            ..Default::default()
                        });
                        return Ok(StartedStream {
                            model: name.clone(),
                            head,
                            rest,
                            attempt_index: attempts.len() - 1,
                        });
                    }
                    Ok(Err(e)) => e,
                    Err(_) => ProviderError::Timeout { phase: "first_byte" },
                };
                let check_failure = matches!(&err, ProviderError::Malformed(m) if m == EMPTY_STREAM);
                if check_failure {
                    self.breakers.record_success(name);
                } else if err.trips_breaker() {
                    self.breakers.record_failure(name);
                }
                let mut attempt = error_attempt(model, &err, started_ms, latency_ms);
                if check_failure {
                    attempt.status = "check_failed".into();
                    attempt.error_kind = Some("empty_content".into());
                }
                attempts.push(attempt);
                if !err.escalates() {
                    return Err(upstream_client_error(&err));
                }
                let retry = if check_failure {
                    None
                } else {
                    self.retry_delay(&err, tries, deadline)
                };
                last_error = Some(err);
                match retry {
                    Some(delay) => {
                        tries += 1;
                        tokio::time::sleep(delay).await;
                    }
                    None => break,
                }
            }
        }
        Err(self.exhausted(attempts, last_error, false, t0))
    }

    /// Before an attempt on `model`: skip it when its breaker is open (recorded), stop when the
    /// chain's deadline has passed (recorded), else the time budget for the attempt.
    fn gate(&self, model: &ModelConfig, attempts: &mut Vec<Attempt>, t0: Instant, deadline: Instant, limit_ms: u64) -> Gate {
        if let Err(why) = self.breakers.allow(&model.name) {
            attempts.push(skip(model, "circuit_open", why, t0));
            return Gate::Skip;
        }
        let now = Instant::now();
        if now >= deadline {
            attempts.push(skip(model, "deadline", "the chain's overall deadline passed".into(), t0));
            return Gate::Deadline;
        }
        let budget = deadline.saturating_duration_since(now).min(Duration::from_millis(limit_ms));
        Gate::Go {
            now,
            budget,
            started_ms: t0.elapsed().as_millis() as u64,
        }
    }

    /// Cost of a finished streamed attempt, from its usage.
    pub fn cost(&self, model: &str, usage: &Usage) -> f64 {
        self.config
            .model(model)
            .map(|m| m.cost_usd(usage.prompt_tokens, usage.completion_tokens))
            .unwrap_or(0.0)
    }

    /// After a failed attempt: wait this long and retry the same model, or None to move on.
    fn retry_delay(&self, err: &ProviderError, tries: u32, deadline: Instant) -> Option<Duration> {
        let r = &self.config.retries;
        if !err.retry_same_model() || tries >= r.max_per_model {
            return None;
        }
        let delay = match err.retry_after() {
            Some(after) if after > Duration::from_millis(r.max_retry_after_ms) => return None,
            Some(after) => after,
            None => {
                let exp = r.backoff_base_ms.saturating_mul(1u64 << tries.min(16)).min(r.backoff_max_ms);
                // Full jitter in [exp/2, exp].
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0) as u64;
                Duration::from_millis(exp / 2 + nanos % (exp / 2 + 1))
            }
        };
        (Instant::now() + delay < deadline).then_some(delay)
    }

    /// The error for a request whose whole chain failed.
    fn exhausted(&self, attempts: &[Attempt], last: Option<ProviderError>, deadline: bool, t0: Instant) -> ApiError {
        let summary: Vec<String> = attempts
            .iter()
            .map(|a| format!("{}: {}", a.model, a.error_kind.as_deref().unwrap_or(&a.status)))
            .collect();
        let detail = if summary.is_empty() {
            "no model could be attempted".to_string()
        } else {
            summary.join("; ")
        };
        if deadline {
            return ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout_error",
                "deadline_exceeded",
                format!("the fallback chain ran out of time ({detail})"),
            );
        }
        let all_rate_limited = attempts.iter().filter(|a| a.status == "error").all(|a| a.http_status == Some(429))
            && attempts.iter().any(|a| a.status == "error");
        if all_rate_limited {
            return ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limit_exceeded",
                format!("every model in the chain is rate limited ({detail})"),
            )
            .with_retry_after(rate_limit_wait(attempts, t0.elapsed().as_millis() as u64));
        }
        let errors: Vec<&Attempt> = attempts.iter().filter(|a| a.status == "error").collect();
        if !errors.is_empty()
            && errors
                .iter()
                .all(|a| a.error_kind.as_deref() == Some(crate::providers::UNSUPPORTED_KIND))
        {
            // No upstream was even asked: the request uses something none of them can take.
            let why: Vec<String> = errors
                .iter()
                .map(|a| format!("{}: {}", a.model, a.reason.as_deref().unwrap_or("unsupported")))
                .collect();
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                crate::providers::UNSUPPORTED_KIND,
                format!("no model in the chain can take this request ({})", why.join("; ")),
            );
        }
        match last {
            Some(ProviderError::Timeout { .. }) => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout_error",
                "upstream_timeout",
                format!("every model in the chain failed ({detail})"),
            ),
            None if attempts.iter().all(|a| a.status == "skipped") => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "no_available_model",
                format!("every model in the chain is unavailable ({detail})"),
            ),
            _ => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "server_error",
                "upstream_error",
                format!("every model in the chain failed ({detail})"),
            ),
        }
    }
}

const EMPTY_STREAM: &str = "the stream ended without any output";

/// Open a stream and read until the first chunk with output. Returns the chunks so far and the rest.
async fn first_output(provider: &Provider, req: &ChatRequest, model: &ModelConfig) -> Result<(Vec<ChatChunk>, ChunkStream), ProviderError> {
    let mut stream = provider.stream(req, model).await?;
    let mut head = Vec::new();
    loop {
        match stream.next().await {
            Some(Ok(chunk)) => {
                let has_output = chunk.has_output();
                head.push(chunk);
                if has_output {
                    return Ok((head, stream));
                }
            }
            Some(Err(e)) => return Err(e),
            None => return Err(ProviderError::Malformed(EMPTY_STREAM.into())),
        }
    }
}

/// The record of a failed attempt.
fn error_attempt(model: &ModelConfig, err: &ProviderError, started_ms: u64, latency_ms: u64) -> Attempt {
    Attempt {
        model: model.name.clone(),
        provider: model.provider.clone(),
        status: "error".into(),
        http_status: match err {
            ProviderError::Status { status, .. } => Some(*status),
            _ => None,
        },
        error_kind: Some(err.kind()),
        reason: Some(err.to_string()),
        retry_after_ms: err.retry_after().map(|d| d.as_millis() as u64),
        started_ms,
        latency_ms,
        ..Default::default()
    }
}

/// When every model of a chain answered 429: how long until the first of them said it would take
/// requests again (each model's latest `retry-after`, counted from when it arrived, never more
/// than the upstream asked for), for the client's `retry-after`. None when one of them gave none.
fn rate_limit_wait(attempts: &[Attempt], now_ms: u64) -> Option<Duration> {
    let mut latest: HashMap<&str, Option<u64>> = HashMap::new();
    for a in attempts.iter().filter(|a| a.http_status == Some(429)) {
        let left = a
            .retry_after_ms
            .map(|ra| (a.started_ms + a.latency_ms + ra).saturating_sub(now_ms).min(ra));
        latest.insert(a.model.as_str(), left);
    }
    let mut soonest: Option<u64> = None;
    for left in latest.into_values() {
        let left = left?;
        soonest = Some(soonest.map_or(left, |s| s.min(left)));
    }
    soonest.map(Duration::from_millis)
}

fn skip(model: &ModelConfig, kind: &str, why: String, t0: Instant) -> Attempt {
    Attempt {
        model: model.name.clone(),
        provider: model.provider.clone(),
        status: "skipped".into(),
        error_kind: Some(kind.into()),
        reason: Some(why),
        started_ms: t0.elapsed().as_millis() as u64,
        ..Default::default()
    }
}

/// An upstream 4xx that another model would also refuse: pass it to the client.
fn upstream_client_error(err: &ProviderError) -> ApiError {
    let (status, message) = match err {
        ProviderError::Status { status, message, .. } => (*status, message.clone()),
        other => (400, other.to_string()),
    };
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    ApiError::new(
        code,
        "invalid_request_error",
        "upstream_rejected_request",
        format!("the upstream rejected the request: {message}"),
    )
}

const REFUSAL_OPENERS: &[&str] = &[
    "i'm sorry, but i can't",
    "i'm sorry, but i cannot",
    "i am sorry, but i cannot",
    "i'm sorry, i can't",
    "i cannot help with",
    "i can't help with",
    "i can't assist with",
    "i cannot assist with",
    "i'm not able to help with",
    "i am unable to help with",
    "i'm unable to help with",
];

/// The response checks. Returns the failed check's kind and a reason.
pub fn check_completion(checks: &CheckConfig, req: &ChatRequest, c: &ChatCompletion) -> Option<(&'static str, String)> {
    let choice = c.choices.first()?;
    let content = choice.message.content.as_deref().unwrap_or("");
    let has_tools = choice.message.tool_calls.as_ref().is_some_and(|t| !t.is_empty());
    if checks.empty_content && content.trim().is_empty() && !has_tools {
        return Some(("empty_content", "the response has no content and no tool calls".into()));
    }
    if checks.truncation && choice.finish_reason.as_deref() == Some("length") && req.max_output_tokens().is_none() {
        return Some((
            "truncated",
            "finish_reason is 'length' although the caller set no max_tokens".into(),
        ));
    }
    if checks.json && req.wants_json() && !has_tools && serde_json::from_str::<serde_json::Value>(strip_code_fence(content)).is_err() {
        return Some((
            "invalid_json",
            "response_format asked for JSON and the content is not valid JSON".into(),
        ));
    }
    if checks.refusal {
        if choice.finish_reason.as_deref() == Some("content_filter") {
            return Some(("refusal", "finish_reason is 'content_filter'".into()));
        }
        let head: String = content
            .trim_start()
            .chars()
            .take(60)
            .collect::<String>()
            .to_lowercase()
            .replace('’', "'");
        if content.len() < 400 && REFUSAL_OPENERS.iter().any(|p| head.starts_with(p)) {
            return Some(("refusal", "the model refused to answer".into()));
        }
    }
    None
}

fn strip_code_fence(s: &str) -> &str {
    let t = s.trim();
    if let Some(inner) = t.strip_prefix("```json").or_else(|| t.strip_prefix("```")) {
        return inner.trim_end().strip_suffix("```").unwrap_or(inner).trim();
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(content: &str, finish: &str) -> ChatCompletion {
        serde_json::from_value(serde_json::json!({
            "id": "x", "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}]
        }))
        .unwrap()
    }

    fn request(extra: serde_json::Value) -> ChatRequest {
        let mut v = serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn response_checks() {
        let checks = CheckConfig::default();
        let plain = request(serde_json::json!({}));
        assert!(check_completion(&checks, &plain, &completion("hello", "stop")).is_none());
        assert_eq!(
            check_completion(&checks, &plain, &completion("  ", "stop")).unwrap().0,
            "empty_content"
        );
        assert_eq!(
            check_completion(&checks, &plain, &completion("abc", "length")).unwrap().0,
            "truncated"
        );
        let limited = request(serde_json::json!({"max_tokens": 3}));
        assert!(check_completion(&checks, &limited, &completion("abc", "length")).is_none());
        let json = request(serde_json::json!({"response_format": {"type": "json_object"}}));
        assert_eq!(
            check_completion(&checks, &json, &completion("{oops", "stop")).unwrap().0,
            "invalid_json"
        );
        assert!(check_completion(&checks, &json, &completion("```json\n{\"a\":1}\n```", "stop")).is_none());
        assert_eq!(
            check_completion(&checks, &plain, &completion("I’m sorry, but I can’t help with that.", "stop"))
                .unwrap()
                .0,
            "refusal"
        );
        let off = CheckConfig {
            refusal: false,
            ..CheckConfig::default()
        };
        assert!(check_completion(&off, &plain, &completion("I'm sorry, but I can't help with that.", "stop")).is_none());
    }

    #[test]
    fn rate_limit_wait_is_the_soonest_model_and_unknown_without_retry_after() {
        let a = |model: &str, started_ms: u64, retry_after_ms: Option<u64>| Attempt {
            model: model.into(),
            status: "error".into(),
            http_status: Some(429),
            retry_after_ms,
            started_ms,
            latency_ms: 10,
            ..Default::default()
        };
        // m1 said 1 s at 10 ms, then 300 ms at 1010 ms (the latest counts); m2 said 5 s.
        let attempts = vec![a("m1", 0, Some(1000)), a("m1", 1000, Some(300)), a("m2", 1100, Some(5000))];
        assert_eq!(rate_limit_wait(&attempts, 1110), Some(Duration::from_millis(200)));
        assert_eq!(rate_limit_wait(&attempts, 9000), Some(Duration::ZERO));
        let attempts = vec![a("m1", 0, Some(1000)), a("m2", 20, None)];
        assert_eq!(rate_limit_wait(&attempts, 100), None);
        assert_eq!(rate_limit_wait(&[], 100), None);
    }

    #[test]
    fn breaker_opens_then_probes_then_closes() {
        let b = Breakers::new(2, Duration::from_millis(30));
        assert!(b.allow("m").is_ok());
        b.record_failure("m");
        assert_eq!(b.state("m"), "closed");
        b.record_failure("m");
        assert_eq!(b.state("m"), "open");
        assert!(b.allow("m").is_err());
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow("m").is_ok(), "one probe after the cool-down");
        assert!(b.allow("m").is_err(), "only one probe at a time");
        b.record_failure("m");
        assert_eq!(b.state("m"), "open", "a failed probe re-opens");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow("m").is_ok());
        b.record_success("m");
        assert_eq!(b.state("m"), "closed");
        assert!(b.allow("m").is_ok());
    }
}
