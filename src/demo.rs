//! `ladder demo`: the router and a fake provider fleet in one process, with an example catalogue,
//! so that a newcomer sees routing and fallback with no API keys.
//!
//! The fleet is one [`crate::fake_provider`] server speaking the OpenAI, Anthropic and Gemini
//! wire formats. The catalogue has four rungs across the three provider kinds: `mini` (cheap,
//! OpenAI-compatible), `flash` (cheap-mid, Gemini API), `sonnet-ish` (mid, Anthropic, flaky: 30%
//! of calls fail with 503) and `frontier` (expensive, OpenAI-compatible). After start-up the demo
//! sends a short tour of requests through the router and prints what happened to each, then keeps
//! serving.

use crate::config::Config;
use std::path::Path;

/// The demo's fake-provider scenario.
pub const DEMO_SCENARIO: &str = r#"
seed = 7
[models.fast-mini]
ability = 0.75
output_tokens = 24
bad_answer = "refusal"
[models.gemini-flash]
ability = 0.78
output_tokens = 30
[models.claude-mid]
ability = 0.8
fail_rate = 0.3
fail_with = { kind = "status", status = 503 }
[models.frontier-xl]
ability = 0.97
latency_ms = 40
"#;

/// The demo catalogue; `{FAKE}` is replaced by the fake provider's address.
pub const DEMO_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:4000"

[store]
path = "{STORE}"

[classifier]
enabled = {CLASSIFIER}
model_dir = "{MODEL_DIR}"
heads_dir = "{HEADS_DIR}"

[routing]
threshold = 0.7
default_task = "chat"

[timeouts]
attempt_ms = 10000
first_byte_ms = 5000
total_ms = 20000

[retries]
max_per_model = 1
backoff_base_ms = 50

[breaker]
failure_threshold = 5
cooldown_ms = 10000

[[providers]]
name = "fake-openai"
kind = "openai"
base_url = "http://{FAKE}/v1"

[[providers]]
name = "fake-anthropic"
kind = "anthropic"
base_url = "http://{FAKE}/v1"

[[providers]]
name = "fake-gemini"
kind = "gemini"
base_url = "http://{FAKE}/v1beta"

[[models]]
name = "mini"
provider = "fake-openai"
upstream = "fast-mini"
input_price = 0.15
output_price = 0.6
context_window = 16000
capabilities = ["json"]
quality = { default = 0.72, code = 0.55, math = 0.5, reasoning = 0.5, chat = 0.85, translation = 0.75 }

[[models]]
name = "flash"
provider = "fake-gemini"
upstream = "gemini-flash"
input_price = 0.3
output_price = 2.5
context_window = 1000000
capabilities = ["json", "tools", "vision"]
quality = { default = 0.8, code = 0.7, math = 0.68, reasoning = 0.7, chat = 0.86, translation = 0.85 }

[[models]]
name = "sonnet-ish"
provider = "fake-anthropic"
upstream = "claude-mid"
input_price = 3.0
output_price = 15.0
context_window = 200000
capabilities = ["json", "tools", "vision"]
quality = { default = 0.86, code = 0.8, math = 0.78, reasoning = 0.8 }

[[models]]
name = "frontier"
provider = "fake-openai"
upstream = "frontier-xl"
input_price = 10.0
output_price = 30.0
context_window = 128000
capabilities = ["json", "tools", "vision"]
quality = { default = 0.94, code = 0.93, math = 0.93, reasoning = 0.92 }
"#;

/// The demo config pointing at a fake provider on `fake_addr`.
pub fn demo_config(fake_addr: &str, store: &Path, model_dir: &Path, heads_dir: &Path) -> anyhow::Result<Config> {
    let classifier = model_dir.join("model.safetensors").exists() && heads_dir.join("CURRENT").exists();
    if !classifier {
        tracing::warn!("encoder weights or heads missing: the demo routes on hints only (run scripts/fetch-model.sh)");
    }
    let text = DEMO_CONFIG
        .replace("{FAKE}", fake_addr)
        .replace("{STORE}", &store.display().to_string())
        .replace("{CLASSIFIER}", if classifier { "true" } else { "false" })
        .replace("{MODEL_DIR}", &model_dir.display().to_string())
        .replace("{HEADS_DIR}", &heads_dir.display().to_string());
    Config::from_toml(&text)
}

/// One request of the guided tour.
pub struct TourStop {
    pub label: &'static str,
    pub body: serde_json::Value,
    /// An extra request header, e.g. a task hint.
    pub header: Option<(&'static str, &'static str)>,
}

/// The tour the demo sends through the router at start-up.
pub fn tour() -> Vec<TourStop> {
    use serde_json::json;
    let stop = |label, body, header| TourStop { label, body, header };
    vec![
        stop(
            "easy chat",
            json!({"model": "auto", "messages": [{"role": "user", "content": "hey! how's it going?"}]}),
            None,
        ),
        stop(
            "translation",
            json!({"model": "auto", "messages": [{"role": "user", "content": "Translate to French: the meeting moved to Thursday at 3pm."}]}),
            None,
        ),
        stop(
            "hard math",
            json!({"model": "auto", "messages": [{"role": "user", "content": "A train leaves at 3:40pm going 72 km/h; a second leaves the same station at 4:05pm at 90 km/h on the same track. At what time and distance does the second catch the first? Show the algebra."}]}),
            None,
        ),
        stop(
            "code, hinted",
            json!({"model": "auto", "messages": [{"role": "user", "content": "Write a Rust function that parses an ISO-8601 duration like PT1H30M into seconds."}]}),
            Some(("x-ladder-task", "code")),
        ),
        stop(
            "named model (Gemini API)",
            json!({"model": "flash", "messages": [
                {"role": "system", "content": "Answer in one sentence."},
                {"role": "user", "content": "What does a model router do?"}
            ]}),
            None,
        ),
        stop(
            "named model (flaky upstream)",
            json!({"model": "sonnet-ish", "messages": [{"role": "user", "content": "Summarize: Ladder picks the cheapest model likely to succeed and escalates when it fails."}]}),
            None,
        ),
        stop(
            "JSON mode",
            json!({"model": "auto", "response_format": {"type": "json_object"}, "messages": [{"role": "user", "content": "Extract name and city as JSON: 'Maria moved from Lisbon to Oslo.'"}]}),
            None,
        ),
    ]
}

/// Start the fake fleet and the router, run the tour, then serve until Ctrl-C (or return right
/// after the tour when `tour_only`).
pub async fn run(listen: &str, tour_only: bool) -> anyhow::Result<()> {
    use crate::server::{AppState, serve, shutdown_signal};
    use std::sync::Arc;

    let fake_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let fake_addr = fake_listener.local_addr()?.to_string();
    let scenario = crate::fake_provider::Scenario::from_toml_str(DEMO_SCENARIO)?;
    let (stop_fake_tx, stop_fake_rx) = tokio::sync::oneshot::channel::<()>();
    let fake = tokio::spawn(crate::fake_provider::serve(fake_listener, scenario, async {
        let _ = stop_fake_rx.await;
    }));

    let store = std::env::temp_dir().join(format!("ladder-demo-{}.db", std::process::id()));
    let mut config = demo_config(&fake_addr, &store, Path::new("models/all-MiniLM-L6-v2"), Path::new("models/heads"))?;
    config.server.listen = listen.to_string();
    // The demo serves without API keys.
    config.auth.enabled = false;
    config.validate()?;
    let state = Arc::new(AppState::build(config)?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(state.clone(), listener, async move {
        tokio::select! {
            _ = shutdown_signal() => {},
            _ = stop_rx => {},
        }
    }));

    println!("Ladder demo: router on http://{addr}, fake providers on http://{fake_addr}");
    println!(
        "catalogue: mini (cheap, openai-kind) < flash (gemini-kind) < sonnet-ish (mid, anthropic-kind, 30% 503s) < frontier (openai-kind)"
    );
    println!("classifier: {}\n", state.scorer.describe());
    let http = reqwest::Client::new();
    println!("{:<30} {:<12} {:<9} {:<12} decision id", "request", "model", "attempts", "outcome");
    for TourStop { label, body, header } in tour() {
        let mut rb = http.post(format!("http://{addr}/v1/chat/completions")).json(&body);
        if let Some((k, v)) = header {
            rb = rb.header(k, v);
        }
        let resp = rb.send().await?;
        let h = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
        let (model, attempts, id) = (h("x-ladder-model"), h("x-ladder-attempts"), h("x-ladder-decision-id"));
        let status = resp.status();
        let rec: serde_json::Value = http
            .get(format!("http://{addr}/v1/decisions/{id}"))
            .send()
            .await?
            .json()
            .await
            .unwrap_or_default();
        let outcome = rec.get("outcome").and_then(|o| o.as_str()).unwrap_or("?");
        println!(
            "{label:<30} {model:<12} {attempts:<9} {:<12} {id}",
            if status.is_success() {
                outcome.to_string()
            } else {
                format!("{outcome} ({status})")
            }
        );
    }
    println!("\nTry it:  curl -s http://{addr}/v1/chat/completions -H 'content-type: application/json' \\");
    println!("           -d '{{\"model\":\"auto\",\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'");
    println!("         curl -s 'http://{addr}/v1/decisions?limit=5'");
    if tour_only {
        let _ = stop_tx.send(());
    } else {
        println!("\nserving until Ctrl-C");
        std::mem::forget(stop_tx);
    }
    server.await??;
    let _ = stop_fake_tx.send(());
    let _ = fake.await;
    let _ = std::fs::remove_file(&store);
    Ok(())
}
