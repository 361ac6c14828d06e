//! The outcome loop over HTTP: `POST /v1/feedback`, `GET /v1/decisions/stats`, `POST /v1/replay`
//! and `POST /v1/admin/reload` (also triggered by SIGHUP).
//!
//! Reloading swaps the classifier's heads for new batches only: a batch already running, and so
//! every request in flight, finishes on the heads it started with, and each decision record names
//! the heads version that scored it.

use super::SharedState;
use super::decisions::parse_time;
use crate::analytics::{self, GroupBy};
use crate::error::ApiError;
use crate::store::Feedback;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    decision_id: String,
    outcome: String,
    #[serde(default)]
    score: Option<f64>,
    #[serde(default)]
    comment: Option<String>,
    /// Who is reporting (an evaluator's name); feedback is idempotent per decision and source.
    #[serde(default)]
    source: Option<String>,
}

fn bad(code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::invalid_request(code, msg)
}

/// `POST /v1/feedback {decision_id, outcome: success|failure, score?: 0..1, comment?, source?}`.
pub async fn feedback(State(state): State<SharedState>, body: Bytes) -> Result<Json<serde_json::Value>, ApiError> {
    let b: FeedbackBody = serde_json::from_slice(&body).map_err(|e| bad("invalid_request_body", format!("invalid feedback body: {e}")))?;
    if b.outcome != "success" && b.outcome != "failure" {
        return Err(bad(
            "invalid_value",
            format!("'outcome' must be 'success' or 'failure', got '{}'", b.outcome),
        )
        .with_param("outcome"));
    }
    if let Some(s) = b.score
        && !(0.0..=1.0).contains(&s)
    {
        return Err(bad("invalid_value", format!("'score' must be between 0 and 1, got {s}")).with_param("score"));
    }
    if b.comment.as_ref().is_some_and(|c| c.len() > 4096) {
        return Err(bad("invalid_value", "'comment' is limited to 4096 bytes").with_param("comment"));
    }
    // Text columns (Postgres's in particular) cannot hold NUL characters.
    if b.comment.as_ref().is_some_and(|c| c.contains('\0')) {
        return Err(bad("invalid_value", "'comment' must not contain NUL characters").with_param("comment"));
    }
    let source = b.source.unwrap_or_else(|| "api".into());
    if source.is_empty() || source.len() > 128 || source.contains('\0') {
        return Err(bad("invalid_value", "'source' must be 1 to 128 characters").with_param("source"));
    }
    let fb = Feedback {
        decision_id: b.decision_id.clone(),
        source,
        outcome: b.outcome,
        score: b.score,
        comment: b.comment,
        ts_ms: (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
    };
    match state.store.put_feedback(fb.clone()).await {
        Ok(true) => Ok(Json(
            json!({"object": "feedback", "decision_id": fb.decision_id, "source": fb.source, "outcome": fb.outcome, "score": fb.score}),
        )),
        Ok(false) => Err(ApiError::not_found(format!("no decision with id '{}'", b.decision_id)).with_param("decision_id")),
        Err(e) => Err(ApiError::internal(format!("writing feedback: {e}"))),
    }
}

#[derive(Debug, Deserialize)]
pub struct StatsParams {
    since: Option<String>,
    until: Option<String>,
    group_by: Option<String>,
}

/// `GET /v1/decisions/stats?since&until&group_by=model|task|day`.
pub async fn stats(State(state): State<SharedState>, Query(p): Query<StatsParams>) -> Result<Json<serde_json::Value>, ApiError> {
    let group_by = p
        .group_by
        .as_deref()
        .map(|g| g.parse::<GroupBy>().map_err(|e| bad("invalid_value", e).with_param("group_by")))
        .transpose()?;
    let since = p.since.as_deref().map(|v| parse_time("since", v)).transpose()?;
    let until = p.until.as_deref().map(|v| parse_time("until", v)).transpose()?;
    let mut records = state
        .store
        .scan(since)
        .await
        .map_err(|e| ApiError::internal(format!("reading the decision log: {e}")))?;
    if let Some(u) = until {
        records.retain(|r| r.ts_ms < u);
    }
    let config = state.config.clone();
    let s = tokio::task::spawn_blocking(move || analytics::stats(&config, &records, group_by))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(serde_json::to_value(s).map_err(|e| ApiError::internal(e.to_string()))?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    threshold: f64,
    #[serde(default)]
    since: Option<String>,
}

/// `POST /v1/replay {threshold, since?}` (admin): what-if routing over the log.
pub async fn replay(State(state): State<SharedState>, headers: HeaderMap, body: Bytes) -> Result<Json<serde_json::Value>, ApiError> {
    crate::auth::require_admin(&state, &headers)?;
    let b: ReplayBody = serde_json::from_slice(&body).map_err(|e| bad("invalid_request_body", format!("invalid replay body: {e}")))?;
    if !(b.threshold > 0.0 && b.threshold < 1.0) {
        return Err(bad(
            "invalid_value",
            format!("'threshold' must be strictly between 0 and 1, got {}", b.threshold),
        )
        .with_param("threshold"));
    }
    let since = b.since.as_deref().map(|v| parse_time("since", v)).transpose()?;
    let mut records = state
        .store
        .scan(since)
        .await
        .map_err(|e| ApiError::internal(format!("reading the decision log: {e}")))?;
    let abilities = state.scorer.classifier().map(|c| c.heads().abilities.clone());
    for r in &mut records {
        if let Some(s) = r.scores.as_mut() {
            s.abilities = abilities.clone();
        }
    }
    let mut config = (*state.config).clone();
    config.routing.threshold = b.threshold;
    let report = tokio::task::spawn_blocking(move || analytics::replay(&config, &records))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(serde_json::to_value(report).map_err(|e| ApiError::internal(e.to_string()))?))
}

/// `POST /v1/admin/reload` (admin): load the heads version named by `models/heads/CURRENT`.
pub async fn reload(State(state): State<SharedState>, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    crate::auth::require_admin(&state, &headers)?;
    let Some(c) = state.scorer.classifier().cloned() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "classifier_disabled",
            "the classifier is disabled in this configuration",
        ));
    };
    let previous = c.heads().manifest.version.clone();
    let version = tokio::task::spawn_blocking(move || c.reload_heads())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                "heads_invalid",
                format!("could not load heads: {e:#}"),
            )
        })?;
    tracing::info!(%previous, %version, "classifier heads reloaded");
    Ok(Json(json!({"object": "heads", "previous": previous, "version": version})))
}

/// Reload the heads on every SIGHUP (Unix).
pub fn spawn_sighup_reload(state: SharedState) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            if let Some(c) = state.scorer.classifier().cloned() {
                match tokio::task::spawn_blocking(move || c.reload_heads()).await {
                    Ok(Ok(v)) => tracing::info!(version = %v, "SIGHUP: classifier heads reloaded"),
                    Ok(Err(e)) => tracing::error!(error = %e, "SIGHUP: could not reload heads; keeping the current ones"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: reload task failed"),
                }
            }
        }
    });
}
