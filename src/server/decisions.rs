//! `GET /v1/decisions` and `GET /v1/decisions/{id}`: reading the decision log over HTTP.
//!
//! Filters: `since` / `until` (RFC 3339, or unix seconds), `model` (the model that served),
//! `task`, `outcome`; paging with `limit` (1..=500, default 50) and the opaque `cursor` returned as
//! `next_cursor`. Newest first.

use super::SharedState;
use crate::error::ApiError;
use crate::store::DecisionQuery;
use crate::task::Task;
use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize)]
pub struct ListParams {
    since: Option<String>,
    until: Option<String>,
    model: Option<String>,
    task: Option<String>,
    outcome: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

const OUTCOMES: &[&str] = &[
    "success",
    "escalated",
    "degraded",
    "failed",
    "rejected",
    "stream_failed",
    "client_disconnected",
];

/// Parse a time given as RFC 3339 or unix seconds into unix milliseconds.
pub fn parse_time(field: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(secs) = v.trim().parse::<f64>()
        && secs.is_finite()
    {
        return Ok((secs * 1000.0) as i64);
    }
    time::OffsetDateTime::parse(v.trim(), &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| {
            ApiError::invalid_request(
                "invalid_value",
                format!("'{field}' must be RFC 3339 (2026-11-25T10:00:00Z) or unix seconds, got '{v}'"),
            )
            .with_param(field)
        })
}

pub async fn list(State(state): State<SharedState>, Query(p): Query<ListParams>) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = match p.limit.as_deref() {
        None => 50,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => {
                return Err(
                    ApiError::invalid_request("invalid_value", format!("'limit' must be an integer between 1 and 500, got '{s}'"))
                        .with_param("limit"),
                );
            }
        },
    };
    let cursor = match p.cursor.as_deref() {
        None => None,
        Some(s) => Some(s.parse::<i64>().map_err(|_| {
            ApiError::invalid_request("invalid_value", format!("'cursor' '{s}' is not a cursor returned by this API")).with_param("cursor")
        })?),
    };
    if let Some(t) = &p.task {
        t.parse::<Task>()
            .map_err(|e| ApiError::invalid_request("invalid_task", e.to_string()).with_param("task"))?;
    }
    if let Some(o) = &p.outcome
        && !OUTCOMES.contains(&o.as_str())
    {
        return Err(ApiError::invalid_request(
            "invalid_value",
            format!("'outcome' must be one of {}, got '{o}'", OUTCOMES.join(", ")),
        )
        .with_param("outcome"));
    }
    let q = DecisionQuery {
        since_ms: p.since.as_deref().map(|v| parse_time("since", v)).transpose()?,
        until_ms: p.until.as_deref().map(|v| parse_time("until", v)).transpose()?,
        model: p.model,
        task: p.task,
        outcome: p.outcome,
        limit,
        cursor,
    };
    let page = state
        .store
        .list(q)
        .await
        .map_err(|e| ApiError::internal(format!("reading the decision log: {e}")))?;
    Ok(Json(json!({
        "object": "list",
        "data": page.records,
        "has_more": page.next_cursor.is_some(),
        "next_cursor": page.next_cursor.map(|c| c.to_string()),
    })))
}

pub async fn get_one(State(state): State<SharedState>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, ApiError> {
    match state.store.get(id.clone()).await {
        Ok(Some(r)) => Ok(Json(serde_json::to_value(r).map_err(|e| ApiError::internal(e.to_string()))?)),
        Ok(None) => Err(ApiError::not_found(format!("no decision with id '{id}'"))),
        Err(e) => Err(ApiError::internal(format!("reading the decision log: {e}"))),
    }
}
