//! End-to-end tests: start [`serve`] on `127.0.0.1:0` and talk to it over
//! real HTTP with reqwest, checking the wire shapes the real APIs produce.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::*;

/// A running fake provider; shuts down when dropped.
struct Fake {
    addr: SocketAddr,
    client: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

impl Fake {
    async fn start(scenario: Scenario) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            if let Err(e) = serve(listener, scenario, shutdown).await {
                panic!("fake provider failed: {e:#}");
            }
        });
        Fake {
            addr,
            client: reqwest::Client::new(),
            _stop: tx,
        }
    }

    async fn toml(s: &str) -> Fake {
        Fake::start(Scenario::from_toml_str(s).expect("valid scenario")).await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn openai(&self, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    async fn anthropic(&self, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/messages"))
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    async fn stats(&self) -> Value {
        self.get_json("/_fake/stats").await
    }

    async fn get_json(&self, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
    }
}

fn chat(model: &str, prompt: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}]})
}

fn messages(model: &str, prompt: &str) -> Value {
    json!({"model": model, "max_tokens": 256, "messages": [{"role": "user", "content": prompt}]})
}

/// Splits an SSE body into `(event name, data)` pairs.
fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = None;
            let mut data = String::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            (name, data)
        })
        .collect()
}

/// Reads a body that must end with an error (an aborted stream); returns what came before.
async fn read_until_body_error(resp: reqwest::Response) -> String {
    let mut stream = resp.bytes_stream();
    let mut received = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(_) => return String::from_utf8_lossy(&received).into_owned(),
        }
    }
    panic!("the body must end with an error: {}", String::from_utf8_lossy(&received));
}

#[tokio::test]
async fn openai_non_stream_shape() {
    let fake = Fake::toml("[models.m]\noutput_tokens = 10").await;
    let resp = fake
        .openai(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hello [difficulty=0.1]"}]},
            ],
        }))
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let v: Value = resp.json().await.expect("json");
    assert!(v["id"].as_str().is_some_and(|id| id.starts_with("chatcmpl-")));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "m");
    assert!(v["created"].as_u64().is_some());
    let choice = &v["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "stop");
    let content = choice["message"]["content"].as_str().expect("content");
    assert!(content.starts_with("Answer from m: "), "{content}");
    assert_eq!(content.split_whitespace().count(), 10);
    assert_eq!(v["usage"]["completion_tokens"], 10);
    // "be brief" (8) + "hello [difficulty=0.1]" (22) = 30 chars -> 8 tokens.
    assert_eq!(v["usage"]["prompt_tokens"], 8);
    assert_eq!(v["usage"]["total_tokens"], 18);
}

#[tokio::test]
async fn openai_max_tokens_json_mode_and_validation() {
    let fake = Fake::toml("").await;
    let mut body = chat("x", "hi");
    body["max_tokens"] = json!(4);
    let v: Value = fake.openai(body).await.json().await.expect("json");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 4);

    let mut body = chat("x", "hi");
    body["response_format"] = json!({"type": "json_object"});
    let v: Value = fake.openai(body).await.json().await.expect("json");
    let content = v["choices"][0]["message"]["content"].as_str().expect("str");
    let inner: Value = serde_json::from_str(content).expect("content is JSON");
    assert_eq!(inner["model"], "x");

    let mut body = chat("x", "hi");
    body["bogus_param"] = json!(1);
    let resp = fake.openai(body).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["param"].is_null());

    let resp = fake.openai(json!({"messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["param"], "model");

    let resp = fake
        .client
        .post(fake.url("/v1/chat/completions"))
        .body("{not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 400);
    assert_eq!(fake.stats().await["rejected"], 3);
}

#[tokio::test]
async fn openai_stream_shape_with_usage() {
    let fake = Fake::toml("[models.m]\noutput_tokens = 10\nchunk_delay_ms = 1").await;
    let mut body = chat("m", "hello");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = fake.openai(body).await;
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().expect("ascii");
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let text = resp.text().await.expect("body");
    let events = sse_events(&text);
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).expect("chunk json"))
        .collect();
    let first = &chunks[0];
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(first["choices"][0]["delta"]["content"], "");
    assert!(first["choices"][0]["finish_reason"].is_null());
    let usage_chunk = chunks.last().expect("usage chunk");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 10);
    let finish_chunk = &chunks[chunks.len() - 2];
    assert_eq!(finish_chunk["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish_chunk["choices"][0]["delta"], json!({}));
    let content: String = chunks[1..chunks.len() - 2]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().expect("delta"))
        .collect();
    assert!(content.starts_with("Answer from m: "));
    assert_eq!(content.split_whitespace().count(), 10);
    assert!(chunks.len() >= 6, "content comes in several chunks");
    for c in &chunks {
        assert_eq!(c["id"], first["id"], "one id per stream");
    }
}

#[tokio::test]
async fn anthropic_non_stream_shape_and_validation() {
    let fake = Fake::toml("[models.c]\noutput_tokens = 7").await;
    let resp = fake
        .anthropic(json!({
            "model": "c",
            "max_tokens": 100,
            "system": [{"type": "text", "text": "sys"}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "stop_sequences": ["\n\nHuman:"],
            "temperature": 0.5,
        }))
        .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.expect("json");
    assert!(v["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "c");
    assert_eq!(v["content"][0]["type"], "text");
    let text = v["content"][0]["text"].as_str().expect("text");
    assert!(text.starts_with("Answer from c: "));
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["stop_sequence"].is_null());
    assert_eq!(v["usage"]["output_tokens"], 7);
    assert_eq!(v["usage"]["input_tokens"], 2);

    // max_tokens is required.
    let resp = fake
        .anthropic(json!({"model": "c", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().expect("msg").contains("max_tokens"));

    // anthropic-version is required.
    let resp = fake
        .client
        .post(fake.url("/v1/messages"))
        .json(&messages("c", "hi"))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 400);

    // A system role inside messages is an error.
    let mut body = messages("c", "hi");
    body["messages"] = json!([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]);
    assert_eq!(fake.anthropic(body).await.status(), 400);

    // So is an OpenAI-only parameter.
    let mut body = messages("c", "hi");
    body["response_format"] = json!({"type": "json_object"});
    assert_eq!(fake.anthropic(body).await.status(), 400);

    // max_tokens truncation.
    let mut body = messages("c", "hi");
    body["max_tokens"] = json!(3);
    let v: Value = fake.anthropic(body).await.json().await.expect("json");
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 3);
}

#[tokio::test]
async fn anthropic_stream_event_sequence() {
    let fake = Fake::toml("[models.c]\noutput_tokens = 9").await;
    let mut body = messages("c", "hello");
    body["stream"] = json!(true);
    let resp = fake.anthropic(body).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/event-stream")
    );
    let text = resp.text().await.expect("body");
    let events = sse_events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().expect("named")).collect();
    assert_eq!(names[..3], ["message_start", "content_block_start", "ping"]);
    assert!(names[3..names.len() - 3].iter().all(|n| *n == "content_block_delta"));
    assert!(names.len() > 6);
    assert_eq!(names[names.len() - 3..], ["content_block_stop", "message_delta", "message_stop"]);
    let datas: Vec<Value> = events.iter().map(|(_, d)| serde_json::from_str(d).expect("event json")).collect();
    for ((name, _), data) in events.iter().zip(&datas) {
        assert_eq!(data["type"].as_str(), name.as_deref(), "type matches event name");
    }
    assert_eq!(datas[0]["message"]["content"], json!([]));
    assert!(datas[0]["message"]["usage"]["input_tokens"].as_u64().is_some());
    assert_eq!(datas[1]["content_block"], json!({"type": "text", "text": ""}));
    let text: String = datas
        .iter()
        .filter(|d| d["type"] == "content_block_delta")
        .map(|d| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().expect("text").to_string()
        })
        .collect();
    assert!(text.starts_with("Answer from c: "));
    let delta = &datas[datas.len() - 2];
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert!(delta["delta"]["stop_sequence"].is_null());
    assert_eq!(delta["usage"]["output_tokens"], 9);
}

#[tokio::test]
async fn sequence_429_then_ok_with_retry_after() {
    let fake = Fake::toml(
        r#"
        [models.flaky]
        sequence = [
            { kind = "status", status = 429, retry_after_s = 1 },
            { kind = "status", status = 529 },
            { kind = "ok" },
        ]
        "#,
    )
    .await;
    let resp = fake.openai(chat("flaky", "hi")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");

    let resp = fake.anthropic(messages("flaky", "hi")).await;
    assert_eq!(resp.status(), 529);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "overloaded_error");

    assert_eq!(fake.openai(chat("flaky", "hi")).await.status(), 200);
    assert_eq!(fake.openai(chat("flaky", "hi")).await.status(), 200);

    let stats = fake.stats().await;
    assert_eq!(stats["models"]["flaky"]["requests"], 4);
    assert_eq!(stats["models"]["flaky"]["faults"], 2);
    assert_eq!(stats["total"], 4);
}

#[tokio::test]
async fn ability_and_fails_on() {
    let fake = Fake::toml(
        r#"
        [models.weak]
        ability = 0.4
        fails_on = ["REGEX"]
        [models.wrong]
        ability = 0.0
        bad_answer = "wrong"
        "#,
    )
    .await;
    let content = |v: Value| v["choices"][0]["message"]["content"].as_str().map(str::to_string);
    let easy = fake.openai(chat("weak", "easy [difficulty=0.2]")).await;
    let easy = content(easy.json().await.expect("json")).expect("content");
    assert!(easy.starts_with("Answer from weak"));
    let hard = fake.openai(chat("weak", "hard [difficulty=0.9]")).await;
    assert_eq!(content(hard.json().await.expect("json")).as_deref(), Some(REFUSAL_TEXT));
    let regex = fake.openai(chat("weak", "write a regex please [difficulty=0.1]")).await;
    assert_eq!(content(regex.json().await.expect("json")).as_deref(), Some(REFUSAL_TEXT));
    let wrong = fake.openai(chat("wrong", "anything")).await;
    let wrong = content(wrong.json().await.expect("json")).expect("content");
    assert!(wrong.contains(WRONG_MARKER));

    let stats = fake.stats().await;
    assert_eq!(stats["models"]["weak"]["good_answers"], 1);
    assert_eq!(stats["models"]["weak"]["bad_answers"], 2);
}

#[tokio::test]
async fn hang_until_client_timeout() {
    let fake = Fake::toml("[models.h]\nsequence = [{kind = \"hang\"}]").await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let started = std::time::Instant::now();
    let err = client
        .post(fake.url("/v1/chat/completions"))
        .json(&chat("h", "hi"))
        .send()
        .await
        .expect_err("must time out");
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The next request is served normally.
    assert_eq!(fake.openai(chat("h", "hi")).await.status(), 200);
}

#[tokio::test]
async fn hang_is_released_by_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let scenario = Scenario::from_toml_str("[defaults]\nsequence = [{kind = \"hang\"}]").expect("scenario");
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, scenario, async move {
        let _ = rx.await;
    }));
    let request = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("http://{addr}/v1/chat/completions"))
            .json(&chat("m", "hi"))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = tx.send(());
    let finished = tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("serve returns promptly");
    finished.expect("join").expect("serve ok");
    let outcome = request.await.expect("join");
    assert!(outcome.is_err(), "hung request is reset at shutdown");
}

#[tokio::test]
async fn drop_stream_aborts_openai_and_anthropic_streams() {
    let fake = Fake::toml(
        "[defaults]\noutput_tokens = 30\nsequence = [{kind = \"drop_stream\", after_chunks = 2}, \
         {kind = \"drop_stream\", after_chunks = 2}, {kind = \"drop_stream\", after_chunks = 0}]",
    )
    .await;
    let mut body = chat("m", "hi");
    body["stream"] = json!(true);
    let resp = fake.openai(body).await;
    assert_eq!(resp.status(), 200);
    let text = read_until_body_error(resp).await;
    assert!(!text.contains("[DONE]"));
    assert_eq!(text.matches("data: ").count(), 3, "role chunk + 2 content chunks");

    let mut body = messages("m", "hi");
    body["stream"] = json!(true);
    let resp = fake.anthropic(body).await;
    assert_eq!(resp.status(), 200);
    let err = resp.text().await.expect_err("body must fail");
    assert!(err.is_body() || err.is_decode() || err.is_request(), "{err:?}");

    // Non-streaming: a truncated body.
    let resp = fake.openai(chat("m", "hi")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.is_err());
}

#[tokio::test]
async fn transport_faults() {
    let fake = Fake::toml(
        r#"
        [defaults]
        sequence = [
            { kind = "reset" },
            { kind = "malformed_json" },
            { kind = "wrong_content_type" },
            { kind = "oversized", bytes = 100000 },
            { kind = "slow_first_byte", delay_ms = 150 },
        ]
        "#,
    )
    .await;
    let err = fake
        .client
        .post(fake.url("/v1/chat/completions"))
        .json(&chat("m", "hi"))
        .send()
        .await
        .expect_err("reset must fail the request");
    assert!(!err.is_timeout(), "{err:?}");

    let resp = fake.openai(chat("m", "hi")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let text = resp.text().await.expect("body");
    assert!(serde_json::from_str::<Value>(&text).is_err());

    let resp = fake.openai(chat("m", "hi")).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().expect("ascii").starts_with("text/html"));

    let resp = fake.openai(chat("m", "hi")).await;
    let bytes = resp.bytes().await.expect("body");
    assert_eq!(bytes.len(), 100000);
    let v: Value = serde_json::from_slice(&bytes).expect("still valid JSON");
    assert_eq!(v["object"], "chat.completion");

    let started = std::time::Instant::now();
    assert_eq!(fake.openai(chat("m", "hi")).await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn control_plane_replace_and_reset() {
    let fake = Fake::toml("").await;
    assert_eq!(fake.openai(chat("a", "hi")).await.status(), 200);

    let scenario = json!({
        "models": {"a": {"sequence": [{"kind": "status", "status": 500}]}},
    });
    let resp = fake
        .client
        .put(fake.url("/_fake/scenario"))
        .json(&scenario)
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 200);
    // The sequence counter restarted: the first request after the swap fails.
    let resp = fake.openai(chat("a", "hi")).await;
    assert_eq!(resp.status(), 500);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["type"], "server_error");
    assert_eq!(fake.openai(chat("a", "hi")).await.status(), 200);
    assert_eq!(fake.stats().await["models"]["a"]["requests"], 3);

    let models = fake.get_json("/v1/models").await;
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "a");

    let resp = fake.client.post(fake.url("/_fake/reset")).send().await.expect("reset");
    assert_eq!(resp.status(), 200);
    assert_eq!(fake.stats().await["total"], 0);
    assert_eq!(fake.openai(chat("a", "hi")).await.status(), 500, "counters reset");

    // Invalid scenarios are rejected and leave the live one in place.
    let resp = fake
        .client
        .put(fake.url("/_fake/scenario"))
        .json(&json!({"modles": {}}))
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 400);

    let log: Value = fake
        .client
        .get(fake.url("/_fake/requests"))
        .send()
        .await
        .expect("log")
        .json()
        .await
        .expect("json");
    assert_eq!(log["requests"][0]["body"]["model"], "a");
}

#[tokio::test]
async fn api_key_auth() {
    let fake = Fake::toml("api_key = \"sekret\"").await;
    let resp = fake.openai(chat("m", "hi")).await;
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let resp = fake
        .client
        .post(fake.url("/v1/chat/completions"))
        .bearer_auth("sekret")
        .json(&chat("m", "hi"))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);

    let resp = fake.anthropic(messages("m", "hi")).await;
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["type"], "authentication_error");

    let resp = fake
        .client
        .post(fake.url("/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", "sekret")
        .json(&messages("m", "hi"))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn fail_rate_is_seeded() {
    let scenario = "seed = 7\n[models.f]\nfail_rate = 0.5\nfail_with = { kind = \"status\", status = 503 }";
    let mut runs = Vec::new();
    for _ in 0..2 {
        let fake = Fake::toml(scenario).await;
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(fake.openai(chat("f", "hi")).await.status().as_u16());
        }
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1], "same seed, same faults");
    assert!(runs[0].contains(&503) && runs[0].contains(&200));
}

#[tokio::test]
async fn fail_mix_picks_among_the_faults_at_the_fail_rate() {
    let fake = Fake::toml(
        "seed = 3\n[models.f]\nfail_rate = 0.5\nfail_mix = [{ kind = \"status\", status = 500 }, \
         { kind = \"status\", status = 429 }, { kind = \"wrong_content_type\" }]",
    )
    .await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..200 {
        let resp = fake.openai(chat("f", "hi")).await;
        let ct = resp.headers()["content-type"].to_str().expect("ascii").to_string();
        let key = match resp.status().as_u16() {
            200 if ct.starts_with("text/html") => "html",
            200 => "ok",
            500 => "500",
            429 => "429",
            other => panic!("unexpected {other}"),
        };
        *seen.entry(key).or_insert(0u32) += 1;
    }
    let faults = 200 - seen["ok"];
    assert!((70..=130).contains(&faults), "{seen:?}");
    for k in ["500", "429", "html"] {
        assert!(seen.get(k).is_some_and(|n| *n >= 15), "{k} too rare: {seen:?}");
    }
    assert_eq!(fake.stats().await["models"]["f"]["faults"], faults);
}

#[tokio::test]
async fn malformed_json_in_a_stream_is_a_broken_event_before_any_output() {
    let fake = Fake::toml("[defaults]\nfail_rate = 1.0\nfail_with = { kind = \"malformed_json\" }").await;
    let mut body = chat("m", "hi");
    body["stream"] = json!(true);
    let resp = fake.openai(body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.expect("a complete body");
    let events = sse_events(&text);
    let json: Vec<Result<Value, _>> = events.iter().map(|(_, d)| serde_json::from_str::<Value>(d)).collect();
    assert!(
        json[0].as_ref().is_ok_and(|v| v["choices"][0]["delta"]["role"] == "assistant"),
        "{text}"
    );
    assert!(json[1].is_err(), "the second event must be broken: {text}");
    assert_eq!(events.last().map(|(_, d)| d.as_str()), Some("[DONE]"));

    let mut body = messages("m", "hi");
    body["stream"] = json!(true);
    let resp = fake.anthropic(body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = sse_events(&resp.text().await.expect("a complete body"));
    assert_eq!(events[0].0.as_deref(), Some("message_start"));
    assert!(serde_json::from_str::<Value>(&events[0].1).is_ok());
    assert_eq!(events[1].0.as_deref(), Some("content_block_start"));
    assert!(serde_json::from_str::<Value>(&events[1].1).is_err());
    assert_eq!(events.last().and_then(|(e, _)| e.as_deref()), Some("message_stop"));
}

#[tokio::test]
async fn tool_calls() {
    let fake = Fake::toml("").await;
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }}]);
    let mut body = chat("m", "weather?");
    body["tools"] = tools;
    body["tool_choice"] = json!("required");
    let v: Value = fake.openai(body.clone()).await.json().await.expect("json");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().expect("args")).expect("json");
    assert!(args["city"].is_string());

    body["stream"] = json!(true);
    let text = fake.openai(body).await.text().await.expect("body");
    assert!(text.contains("\"tool_calls\""));
    assert!(text.contains("\"finish_reason\":\"tool_calls\""));

    let mut body = messages("m", "weather?");
    body["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object",
        "properties": {"city": {"type": "string"}}}}]);
    body["tool_choice"] = json!({"type": "any"});
    let v: Value = fake.anthropic(body).await.json().await.expect("json");
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["content"][0]["type"], "tool_use");
    assert!(v["content"][0]["input"]["city"].is_string());
}

#[tokio::test]
async fn app_router_works_in_process() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = app(Scenario::from_toml_str("[defaults]\nsequence = [{kind = \"reset\"}]").expect("scenario"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/chat/completions");
    // Degraded reset: the request or its body fails.
    let first = client.post(&url).json(&chat("m", "hi")).send().await;
    if let Ok(resp) = first {
        assert!(resp.bytes().await.is_err());
    }
    let resp = client.post(&url).json(&chat("m", "hi")).send().await.expect("sent");
    assert_eq!(resp.status(), 200);
}

impl Fake {
    /// `POST /v1beta/models/{model}:{method}` (method with its query, e.g.
    /// `streamGenerateContent?alt=sse`).
    async fn gemini(&self, model: &str, method: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1beta/models/{model}:{method}")))
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }

    /// [`Fake::gemini`] with `x-goog-api-key`.
    async fn gemini_keyed(&self, model: &str, method: &str, key: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/v1beta/models/{model}:{method}")))
            .header("x-goog-api-key", key)
            .json(&body)
            .send()
            .await
            .expect("request sent")
    }
}

fn contents(prompt: &str) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": prompt}]}]})
}

#[tokio::test]
async fn gemini_non_stream_shape() {
    let fake = Fake::toml("[models.g]\noutput_tokens = 10").await;
    let resp = fake
        .gemini(
            "g",
            "generateContent",
            json!({
                "system_instruction": {"parts": [{"text": "be brief"}]},
                "contents": [{"role": "user", "parts": [{"text": "hello [difficulty=0.1]"}]}],
                "generationConfig": {"temperature": 1.5, "topP": 0.5, "stopSequences": ["\n\n\n"]},
            }),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json; charset=UTF-8");
    let v: Value = resp.json().await.expect("json");
    let c = &v["candidates"][0];
    assert_eq!(c["content"]["role"], "model");
    assert_eq!(c["finishReason"], "STOP");
    assert_eq!(c["index"], 0);
    let text = c["content"]["parts"][0]["text"].as_str().expect("text");
    assert!(text.starts_with("Answer from g: "), "{text}");
    assert_eq!(text.split_whitespace().count(), 10);
    // "be brief" (8) + "hello [difficulty=0.1]" (22) = 30 chars -> 8 tokens.
    assert_eq!(v["usageMetadata"]["promptTokenCount"], 8);
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 10);
    assert_eq!(v["usageMetadata"]["totalTokenCount"], 18);
    assert_eq!(v["modelVersion"], "g");
    assert!(v["responseId"].as_str().is_some_and(|s| !s.is_empty()));

    let mut body = contents("hi");
    body["generationConfig"] = json!({"maxOutputTokens": 3});
    let v: Value = fake.gemini("g", "generateContent", body).await.json().await.expect("json");
    assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 3);

    let mut body = contents("hi");
    body["generationConfig"] = json!({"responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object", "properties": {"n": {"type": "integer"}}, "additionalProperties": false}});
    let v: Value = fake.gemini("g", "generateContent", body).await.json().await.expect("json");
    let text = v["candidates"][0]["content"]["parts"][0]["text"].as_str().expect("text");
    assert_eq!(serde_json::from_str::<Value>(text).expect("JSON output"), json!({"n": 1}));

    let resp = fake.gemini("g", "countTokens", contents("hi")).await;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["status"], "NOT_FOUND");
    assert_eq!(fake.stats().await["models"]["g"]["gemini_requests"], 3);
}

#[tokio::test]
async fn gemini_validation() {
    let fake = Fake::toml("").await;
    let rejected = |body: Value, needle: &'static str| {
        let fake = &fake;
        async move {
            let resp = fake.gemini("g", "generateContent", body.clone()).await;
            assert_eq!(resp.status(), 400, "{body}");
            let v: Value = resp.json().await.expect("json");
            assert_eq!(v["error"]["code"], 400);
            assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
            let msg = v["error"]["message"].as_str().expect("message");
            assert!(msg.contains(needle), "{body}: {msg}");
        }
    };
    rejected(json!({"contents": []}), "contents is not specified").await;
    rejected(
        json!({"messages": [{"role": "user", "content": "hi"}]}),
        "Unknown name \"messages\"",
    )
    .await;
    rejected(json!({"contents": [{"role": "system", "parts": [{"text": "x"}]}]}), "valid role").await;
    rejected(json!({"contents": [{"role": "user", "parts": []}]}), "must not be empty").await;
    rejected(json!({"contents": [{"role": "user", "parts": [{"text": ""}]}]}), "empty text").await;
    rejected(
        json!({"contents": [{"role": "user", "parts": [{"text": "a", "inlineData": {"mimeType": "image/png", "data": "AA=="}}]}]}),
        "oneof",
    )
    .await;
    rejected(
        json!({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "not base64!"}}]}]}),
        "Base64",
    )
    .await;
    rejected(
        json!({"contents": [{"role": "user", "parts": [{"fileData": {"fileUri": "http://x/a.png"}}]}]}),
        "file uri",
    )
    .await;
    let mut body = contents("hi");
    body["generationConfig"] = json!({"temperature": 2.5});
    rejected(body, "temperature").await;
    let mut body = contents("hi");
    body["generationConfig"] = json!({"stopSequences": ["a", "b", "c", "d", "e", "f"]});
    rejected(body, "must not exceed 5").await;
    let mut body = contents("hi");
    body["generationConfig"] = json!({"responseJsonSchema": {"type": "object"}});
    rejected(body, "response_mime_type").await;
    let mut body = contents("hi");
    body["generationConfig"] =
        json!({"responseMimeType": "application/json", "responseSchema": {"type": "object", "additionalProperties": false}});
    rejected(body, "Unknown name \"additionalProperties\"").await;
    let mut body = contents("hi");
    body["generationConfig"] = json!({"max_tokens": 5});
    rejected(body, "Unknown name \"max_tokens\" at 'generation_config'").await;
    let mut body = contents("hi");
    body["tools"] = json!([{"functionDeclarations": [{"name": "f", "parameters": {"type": "object", "additionalProperties": false}}]}]);
    rejected(body, "Unknown name \"additionalProperties\"").await;
    let mut body = contents("hi");
    body["tools"] = json!([{"functionDeclarations": [{"name": "bad name"}]}]);
    rejected(body, "Invalid function name").await;
    let mut body = contents("hi");
    body["tools"] = json!([{"functionDeclarations": [{"name": "f"}]}]);
    body["toolConfig"] = json!({"functionCallingConfig": {"mode": "AUTO", "allowedFunctionNames": ["f"]}});
    rejected(body, "only be set when the Mode is ANY").await;
    let call = |signed: bool| {
        let mut part = json!({"functionCall": {"name": "f", "args": {}}});
        if signed {
            part["thoughtSignature"] = json!("c2ln");
        }
        part
    };
    let turns = |model_part: Value, answer: Value| {
        json!({"contents": [
            {"role": "user", "parts": [{"text": "go"}]},
            {"role": "model", "parts": [model_part]},
            {"role": "user", "parts": answer},
        ]})
    };
    let answer = json!([{"functionResponse": {"name": "f", "response": {"ok": true}}}]);
    rejected(turns(call(false), answer.clone()), "missing a thought_signature").await;
    rejected(
        turns(call(true), json!([{"text": "no answer"}])),
        "number of function response parts",
    )
    .await;
    rejected(
        json!({"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {}}}]}]}),
        "immediately after a function call turn",
    )
    .await;
    assert_eq!(fake.stats().await["rejected"], 19);

    // What Ladder sends: signed calls, answered; JSON schemas as is; snake_case accepted.
    let mut ok = turns(call(true), answer);
    ok["tools"] =
        json!([{"function_declarations": [{"name": "f", "parametersJsonSchema": {"type": "object", "additionalProperties": false}}]}]);
    ok["toolConfig"] = json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}});
    let resp = fake.gemini("g", "generateContent", ok).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap_or_default());
}

#[tokio::test]
async fn gemini_streams_sse_and_json_array() {
    let fake = Fake::toml("[models.g]\noutput_tokens = 10\nchunk_delay_ms = 1").await;
    let resp = fake.gemini("g", "streamGenerateContent?alt=sse", contents("hello")).await;
    assert_eq!(resp.status(), 200);
    assert!(content_type(&resp).starts_with("text/event-stream"));
    let text = resp.text().await.expect("body");
    assert!(text.contains("\r\n\r\n"), "Gemini's events end with CRLF CRLF");
    let events: Vec<Value> = text
        .split("\r\n\r\n")
        .filter(|e| !e.is_empty())
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").expect("data line")).expect("event json"))
        .collect();
    assert!(events.len() >= 3, "several events");
    let (last, rest) = events.split_last().expect("events");
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 10);
    assert!(rest.iter().all(|e| e["candidates"][0].get("finishReason").is_none()));
    let streamed: String = events
        .iter()
        .map(|e| e["candidates"][0]["content"]["parts"][0]["text"].as_str().expect("text"))
        .collect();
    let whole: Value = fake
        .gemini("g", "generateContent", contents("hello"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        streamed,
        whole["candidates"][0]["content"]["parts"][0]["text"].as_str().expect("text")
    );

    let resp = fake.gemini("g", "streamGenerateContent", contents("hello")).await;
    assert!(content_type(&resp).starts_with("application/json"));
    let array: Value = resp.json().await.expect("a JSON array");
    assert_eq!(array.as_array().expect("array").len(), events.len());
}

#[tokio::test]
async fn gemini_auth_errors_and_faults() {
    let fake = Fake::toml(
        "api_key = \"sekret\"\n[models.g]\nsequence = [{kind = \"status\", status = 429, retry_after_s = 3}, \
         {kind = \"drop_stream\", after_chunks = 2}]\noutput_tokens = 30",
    )
    .await;
    let resp = fake.gemini("g", "generateContent", contents("hi")).await;
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
    let resp = fake.gemini_keyed("g", "generateContent", "wrong", contents("hi")).await;
    assert_eq!(resp.status(), 400, "Gemini answers a bad key with 400");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["details"][0]["reason"], "API_KEY_INVALID");
    assert_eq!(fake.stats().await["rejected"], 2);

    let resp = fake.gemini_keyed("g", "generateContent", "sekret", contents("hi")).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_none(), "Gemini says it in the body");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(v["error"]["details"][0]["@type"], "type.googleapis.com/google.rpc.RetryInfo");
    assert_eq!(v["error"]["details"][0]["retryDelay"], "3s");

    let resp = fake
        .client
        .post(fake.url("/v1beta/models/g:streamGenerateContent?alt=sse&key=sekret"))
        .json(&contents("hi"))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200, "the key may be a query parameter");
    let text = read_until_body_error(resp).await;
    assert_eq!(text.matches("data: ").count(), 2);
    assert!(!text.contains("finishReason"));

    let models = fake.get_json("/v1beta/models?key=sekret").await;
    assert_eq!(models["models"][0]["name"], "models/g");
}

#[tokio::test]
async fn gemini_tool_calls() {
    let fake = Fake::toml("").await;
    let mut body = contents("weather?");
    body["tools"] = json!([{"functionDeclarations": [{"name": "get_weather",
        "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}}}]}]);
    body["toolConfig"] = json!({"functionCallingConfig": {"mode": "ANY"}});
    let v: Value = fake.gemini("m", "generateContent", body.clone()).await.json().await.expect("json");
    let c = &v["candidates"][0];
    assert_eq!(c["finishReason"], "STOP");
    let part = &c["content"]["parts"][0];
    assert_eq!(part["functionCall"]["name"], "get_weather");
    assert!(part["functionCall"]["args"]["city"].is_string());
    assert!(part["thoughtSignature"].as_str().is_some_and(is_base64_like), "{part}");

    let text = fake
        .gemini("m", "streamGenerateContent?alt=sse", body.clone())
        .await
        .text()
        .await
        .expect("body");
    assert_eq!(text.matches("data: ").count(), 1, "a function call comes whole in one event");
    assert!(text.contains("\"functionCall\"") && text.contains("\"finishReason\":\"STOP\""));

    body["toolConfig"] = json!({"functionCallingConfig": {"mode": "NONE"}});
    let v: Value = fake.gemini("m", "generateContent", body).await.json().await.expect("json");
    assert!(v["candidates"][0]["content"]["parts"][0]["text"].is_string());
}

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("content-type")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default()
}

fn is_base64_like(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}
