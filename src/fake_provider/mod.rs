//! A faithful local fake of upstream LLM provider HTTP APIs.
//!
//! The fake provider speaks the **OpenAI Chat Completions** API
//! (`POST /v1/chat/completions`), the **Anthropic Messages** API
//! (`POST /v1/messages`) and the **Gemini** API
//! (`POST /v1beta/models/{model}:generateContent` / `:streamGenerateContent`),
//! streaming and non-streaming, with scriptable model
//! quality, latency and faults. Tests, benchmarks and the
//! `ladder fake-provider` / `ladder demo` subcommands point Ladder at it
//! instead of a real provider.
//!
//! It deliberately shares **no wire types** with the rest of Ladder: bodies
//! are handled as `serde_json::Value` and written from the public API
//! references, so a translation bug in Ladder cannot be mirrored here and
//! cancel out. Requests are validated about as strictly as the real APIs do
//! (see [`openai`], [`anthropic`] and [`gemini`]).
//!
//! # Behaviour
//!
//! A [`Scenario`] (TOML file, or JSON on the control plane) describes each
//! model: its `ability` (it answers well iff `ability >= difficulty(prompt)`,
//! difficulty being a `[difficulty=0.8]` marker in the user text or else a
//! stable hash of it), latency, answer length, what its bad answers look like,
//! and which faults it injects: a scripted `sequence` for its first requests,
//! then `fail_with` at a seeded `fail_rate`. See [`scenario`] for the format
//! and [`Behavior`] for the fault kinds.
//!
//! # Endpoints
//!
//! | Endpoint | Purpose |
//! |---|---|
//! | `POST /v1/chat/completions` | OpenAI Chat Completions |
//! | `POST /v1/messages` | Anthropic Messages |
//! | `POST /v1beta/models/{model}:generateContent` | Gemini; `:streamGenerateContent?alt=sse` streams (a JSON array without `alt=sse`) |
//! | `GET /v1/models` | models of the scenario (Anthropic shape if `anthropic-version` is sent) |
//! | `GET /v1beta/models` | models of the scenario, Gemini shape |
//! | `GET /healthz` | liveness |
//! | `PUT /_fake/scenario` | replace the scenario (JSON, or TOML with a `toml` content type); resets sequence counters |
//! | `GET /_fake/scenario` | the live scenario as JSON |
//! | `GET /_fake/stats` | `{"models": {"<model>": {"requests": N, ...}}, "total": N, "rejected": N}` |
//! | `GET /_fake/requests` | the last 256 requests (headers, body) that reached a model |
//! | `POST /_fake/reset` | zero stats, sequence counters, RNGs and the request log |
//!
//! The control plane (`/_fake/*`) needs no authentication.
//!
//! # Serving
//!
//! [`serve`] is the complete server: it supports every fault, including
//! `reset` (see [`net`]) and wakes `hang`ing requests at shutdown. [`app`]
//! returns the bare router for in-process use; served by someone else's
//! `axum::serve`, `reset` degrades to a body error right after the headers,
//! and `hang` lasts until the client disconnects.

mod answer;
mod anthropic;
mod gemini;
mod handler;
mod net;
mod openai;
mod scenario;
mod state;

#[cfg(test)]
mod tests;

use std::future::{Future, IntoFuture as _};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use answer::{REFUSAL_TEXT, WRONG_MARKER};
pub use openai::CALL_TOOL_MARKER;
pub use scenario::{BadAnswer, Behavior, ModelSpec, Scenario};

use handler::{ApiError, error_response};
use net::{ConnKill, KillableListener};
use state::{Api, AppState, Shared};

/// How long [`serve`] waits for in-flight responses after `shutdown`
/// resolves before returning anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Largest scenario accepted on `PUT /_fake/scenario`.
const MAX_SCENARIO_BYTES: usize = 4 * 1024 * 1024;

/// Serves the fake provider on `listener` until `shutdown` resolves.
///
/// Shutdown is graceful: the listener stops accepting, requests that are
/// `hang`ing are released (their connections are reset), and in-flight
/// responses get up to 5 seconds to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    scenario: Scenario,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let router = router(Shared::new(scenario, token.clone()));
    let make_service = router.into_make_service_with_connect_info::<ConnKill>();

    let signal_token = token.clone();
    let signal = async move {
        shutdown.await;
        signal_token.cancel();
    };
    let server = axum::serve(KillableListener(listener), make_service)
        .with_graceful_shutdown(signal)
        .into_future();
    let deadline = async {
        token.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        result = server => result?,
        () = deadline => {
            tracing::warn!("fake provider: responses still in flight after shutdown grace period");
        }
    }
    Ok(())
}

/// The fake provider's router, for in-process use (demo, benches).
///
/// Prefer [`serve`] when the `reset` or `hang` faults matter; see the module
/// docs for how they degrade here.
pub fn app(scenario: Scenario) -> Router {
    router(Shared::new(scenario, CancellationToken::new()))
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(handler::openai_chat))
        .route("/v1/messages", post(handler::anthropic_messages))
        .route("/v1/models", get(list_models))
        .route("/v1beta/models", get(list_gemini_models))
        .route("/v1beta/models/{target}", post(handler::gemini_generate))
        .route("/healthz", get(healthz))
        .route("/_fake/scenario", get(get_scenario).put(put_scenario))
        .route("/_fake/stats", get(get_stats))
        .route("/_fake/requests", get(get_requests))
        .route("/_fake/reset", post(post_reset))
        .fallback(not_found)
        .with_state(state)
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn not_found(req: Request) -> Response {
    let message = format!("Unknown request URL: {} {}", req.method(), req.uri().path());
    error_response(Api::Openai, ApiError::new(StatusCode::NOT_FOUND, message))
}

/// `GET /v1/models`: OpenAI list shape, or Anthropic's when the request
/// carries `anthropic-version`. Accepts either API's credentials.
async fn list_models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let scenario = state.scenario();
    let api = if headers.contains_key("anthropic-version") {
        Api::Anthropic
    } else {
        Api::Openai
    };
    if let Some(expected) = scenario.api_key.as_deref() {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        if bearer != Some(expected) && x_api_key != Some(expected) {
            let mut err = ApiError::new(StatusCode::UNAUTHORIZED, "Invalid API key.");
            if api == Api::Openai {
                err = err.code("invalid_api_key");
            }
            return error_response(api, err);
        }
    }
    let names: Vec<&str> = scenario.model_names().collect();
    let body = match api {
        Api::Openai => json!({
            "object": "list",
            "data": names.iter().map(|id| json!({
                "id": id, "object": "model", "created": 0, "owned_by": "ladder-fake",
            })).collect::<Vec<_>>(),
        }),
        Api::Anthropic => json!({
            "data": names.iter().map(|id| json!({
                "type": "model", "id": id, "display_name": id,
                "created_at": "1970-01-01T00:00:00Z",
            })).collect::<Vec<_>>(),
            "has_more": false,
            "first_id": names.first(),
            "last_id": names.last(),
        }),
        Api::Gemini => gemini::models_list(&names),
    };
    Json(body).into_response()
}

/// `GET /v1beta/models`: Gemini's list shape; `x-goog-api-key` or `?key=` when a key is set.
async fn list_gemini_models(State(state): State<AppState>, req: Request) -> Response {
    let scenario = state.scenario();
    if let Some(expected) = scenario.api_key.as_deref() {
        let header = req.headers().get("x-goog-api-key").and_then(|v| v.to_str().ok());
        let query = req
            .uri()
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("key="));
        if header.or(query) != Some(expected) {
            let err = ApiError::invalid("API key not valid. Please pass a valid API key.").code("API_KEY_INVALID");
            return error_response(Api::Gemini, err);
        }
    }
    let names: Vec<&str> = scenario.model_names().collect();
    Json(gemini::models_list(&names)).into_response()
}

async fn get_scenario(State(state): State<AppState>) -> Response {
    match serde_json::to_value(&*state.scenario()) {
        Ok(v) => Json(v).into_response(),
        Err(e) => control_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `PUT /_fake/scenario`: replaces the scenario; resets sequence counters.
async fn put_scenario(State(state): State<AppState>, req: Request) -> Response {
    let is_toml = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("toml"));
    let bytes = match axum::body::to_bytes(req.into_body(), MAX_SCENARIO_BYTES).await {
        Ok(b) => b,
        Err(e) => return control_error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()),
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return control_error(StatusCode::BAD_REQUEST, "scenario is not valid UTF-8");
    };
    let parsed = if is_toml {
        Scenario::from_toml_str(text)
    } else {
        Scenario::from_json_str(text)
    };
    match parsed {
        Ok(scenario) => {
            state.replace_scenario(scenario);
            Json(json!({"status": "ok"})).into_response()
        }
        Err(e) => control_error(StatusCode::BAD_REQUEST, &format!("{e:#}")),
    }
}

async fn get_stats(State(state): State<AppState>) -> Json<Value> {
    Json(state.stats_json())
}

async fn get_requests(State(state): State<AppState>) -> Json<Value> {
    Json(state.requests_json())
}

async fn post_reset(State(state): State<AppState>) -> Json<Value> {
    state.reset();
    Json(json!({"status": "ok"}))
}

fn control_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}
