//! The HTTP server: axum routes, request parsing and validation, errors in OpenAI's shape, and
//! graceful shutdown.
//!
//! - `POST /v1/chat/completions` ([`chat`]): the OpenAI-compatible entry point, streaming or not.
//! - `POST /v1/route`: the decision for a request body, without calling any upstream.
//! - `GET /v1/decisions`, `GET /v1/decisions/{id}` ([`decisions`]): the decision log.
//! - `GET /v1/models`, `GET /healthz`.
//!
//! On SIGTERM or Ctrl-C the server stops accepting connections, lets in-flight requests finish
//! (up to `server.shutdown_grace_ms`), then flushes the decision log.

pub mod chat;
pub mod decisions;
pub mod learning;

use crate::classifier::Scorer;
use crate::config::Config;
use crate::error::ApiError;
use crate::executor::Executor;
use crate::store::Store;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Everything a request handler needs.
pub struct AppState {
    pub config: Arc<Config>,
    pub executor: Executor,
    pub store: Store,
    pub scorer: Scorer,
    /// API keys, the admin key and per-key limits.
    pub auth: crate::auth::Auth,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    /// Wire the configured parts together: providers, decision log, classifier.
    pub fn build(config: Config) -> anyhow::Result<AppState> {
        let config = Arc::new(config);
        let executor = Executor::from_config(config.clone())?;
        let store = Store::open(&config.store)?;
        let scorer = Scorer::from_config(&config.classifier, config.routing.min_task_confidence)?;
        let auth = crate::auth::Auth::from_config(&config, store.pool())?;
        Ok(AppState {
            config,
            executor,
            store,
            scorer,
            auth,
        })
    }
}

pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/route", post(chat::route_only))
        .route("/v1/decisions", get(decisions::list))
        .route("/v1/decisions/stats", get(learning::stats))
        .route("/v1/feedback", post(learning::feedback))
        .route("/v1/replay", post(learning::replay))
        .route("/v1/admin/reload", post(learning::reload))
        .route("/v1/decisions/{id}", get(decisions::get_one))
        .route("/v1/models", get(models))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone())
        // Last, so that it covers every route above (see `crate::auth`).
        .layer(axum::middleware::from_fn_with_state(state, crate::auth::middleware))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn models(State(state): State<SharedState>) -> Json<serde_json::Value> {
    let mut data = vec![json!({
        "id": "auto", "object": "model", "created": 0, "owned_by": "ladder",
        "ladder": {"description": "Ladder chooses the cheapest model likely to succeed"}
    })];
    for m in &state.config.models {
        data.push(json!({
            "id": m.name,
            "object": "model",
            "created": 0,
            "owned_by": m.provider,
            "ladder": {
                "upstream": m.upstream_id(),
                "input_price_per_mtok": m.input_price,
                "output_price_per_mtok": m.output_price,
                "context_window": m.context_window,
                "capabilities": m.capabilities,
                "quality": m.quality,
                "circuit": state.executor.breakers.state(&m.name),
            }
        }));
    }
    Json(json!({"object": "list", "data": data}))
}

async fn healthz(State(state): State<SharedState>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "classifier": state.scorer.describe(),
        "models": state.config.models.len(),
    }))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Serve until `shutdown` resolves, drain in-flight requests, flush the log.
pub async fn serve(
    state: SharedState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grace = Duration::from_millis(state.config.server.shutdown_grace_ms);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let signalled = async move {
        shutdown.await;
        let _ = tx.send(true);
    };
    let mut rx2 = rx;
    let app = router(state.clone());
    learning::spawn_sighup_reload(state.clone());
    // Without TCP_NODELAY, every SSE chunk after the first waits for the client's delayed ACK
    // (Nagle's algorithm): ~40 ms of added latency per round of a stream.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("could not set TCP_NODELAY: {e}");
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = rx2.wait_for(|v| *v).await;
        tracing::info!("shutdown requested: no new connections; draining in-flight requests");
    });
    let server = std::future::IntoFuture::into_future(server);
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r?,
        _ = signalled => {
            tokio::select! {
                r = &mut server => r?,
                _ = tokio::time::sleep(grace) => tracing::warn!("shutdown grace period over; abandoning unfinished requests"),
            }
        }
    }
    state.store.flush().await;
    tracing::info!("decision log flushed; bye");
    Ok(())
}
