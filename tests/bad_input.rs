//! A corpus of bad requests against a real `ladder serve` (see `common`): malformed and
//! mistyped JSON, missing fields, oversized bodies, invalid UTF-8, a ~1M-token prompt, deeply
//! nested JSON, unknown models and tasks, bad hints and limits, wrong content types. Each must get
//! a 4xx in OpenAI's error shape with a message, never a 5xx or a crash, and the server must stay
//! healthy afterwards.

mod common;

use common::*;
use serde_json::{Value, json};

fn ok_body() -> Value {
    req("auto", "Say hello to the bad input tests.")
}

fn with(mut base: Value, key: &str, v: Value) -> Value {
    base[key] = v;
    base
}

fn nested(open: &str, close: &str, depth: usize, inner: &str) -> String {
    let mut s = String::with_capacity(depth * (open.len() + close.len()) + inner.len());
    for _ in 0..depth {
        s.push_str(open);
    }
    s.push_str(inner);
    for _ in 0..depth {
        s.push_str(close);
    }
    s
}

struct Case {
    name: String,
    body: Vec<u8>,
    content_type: &'static str,
    headers: Vec<(&'static str, Vec<u8>)>,
    /// Expected status (None: any 4xx).
    status: Option<u16>,
    /// Expected `error.code` (None: any).
    code: Option<&'static str>,
    /// Built from a JSON value (so it can be re-sent with `"stream": true`).
    json: bool,
}

fn case(name: &str, body: impl Into<Vec<u8>>, status: u16, code: &'static str) -> Case {
    Case {
        name: name.into(),
        body: body.into(),
        content_type: "application/json",
        headers: Vec::new(),
        status: Some(status),
        code: Some(code),
        json: false,
    }
}

fn json_case(name: &str, body: Value, status: u16, code: &'static str) -> Case {
    Case {
        json: true,
        ..case(name, serde_json::to_vec(&body).unwrap(), status, code)
    }
}

fn corpus() -> Vec<Case> {
    let schema = "invalid_request_body";
    let inv = "invalid_value";
    let mut c = vec![
        // Not JSON, or not the right JSON.
        case("truncated JSON", &b"{\"model\": \"auto\", \"messages\": ["[..], 400, schema),
        case("empty body", Vec::new(), 400, schema),
        case("garbage", &b"\x00\x01\x02 not json"[..], 400, schema),
        case(
            "trailing garbage",
            &b"{\"model\":\"auto\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]} xyz"[..],
            400,
            schema,
        ),
        case("array body", &b"[]"[..], 400, schema),
        case("string body", &b"\"hello\""[..], 400, schema),
        case("null body", &b"null"[..], 400, schema),
        case("number body", &b"42"[..], 400, schema),
        case(
            "invalid UTF-8 in a string",
            &b"{\"model\":\"auto\",\"messages\":[{\"role\":\"user\",\"content\":\"caf\xc3\x28 \xff\xfe\"}]}"[..],
            400,
            schema,
        ),
        case(
            "lone surrogate escape",
            &br#"{"model":"auto","messages":[{"role":"user","content":"\ud800"}]}"#[..],
            400,
            schema,
        ),
        case(
            "duplicate keys",
            &br#"{"model":"auto","model":"auto","messages":[{"role":"user","content":"x"}]}"#[..],
            400,
            schema,
        ),
        // Wrong types.
        json_case("model is a number", with(ok_body(), "model", json!(42)), 400, schema),
        json_case("messages is a string", with(ok_body(), "messages", json!("hi")), 400, schema),
        json_case(
            "messages is an object",
            with(ok_body(), "messages", json!({"role": "user"})),
            400,
            schema,
        ),
        json_case(
            "content is a number",
            with(ok_body(), "messages", json!([{"role": "user", "content": 42}])),
            400,
            schema,
        ),
        json_case(
            "content part without type",
            with(ok_body(), "messages", json!([{"role": "user", "content": [{"text": "x"}]}])),
            400,
            schema,
        ),
        json_case(
            "unknown role",
            with(ok_body(), "messages", json!([{"role": "wizard", "content": "x"}])),
            400,
            schema,
        ),
        json_case("message is a string", with(ok_body(), "messages", json!(["hello"])), 400, schema),
        json_case("stream is a string", with(ok_body(), "stream", json!("yes")), 400, schema),
        json_case("temperature is a string", with(ok_body(), "temperature", json!("hot")), 400, schema),
        json_case("tools is an object", with(ok_body(), "tools", json!({"a": 1})), 400, schema),
        json_case(
            "stream_options is a list",
            with(ok_body(), "stream_options", json!([1])),
            400,
            schema,
        ),
        json_case(
            "response_format is a string",
            with(ok_body(), "response_format", json!("json")),
            400,
            schema,
        ),
        // Missing or empty fields.
        json_case("no model", json!({"messages": [{"role": "user", "content": "x"}]}), 400, schema),
        json_case("no messages", json!({"model": "auto"}), 400, schema),
        json_case(
            "message without role",
            with(ok_body(), "messages", json!([{"content": "x"}])),
            400,
            schema,
        ),
        json_case("empty model", with(ok_body(), "model", json!("  ")), 400, "missing_model"),
        json_case("empty messages", with(ok_body(), "messages", json!([])), 400, "empty_messages"),
        json_case(
            "user without content",
            with(ok_body(), "messages", json!([{"role": "user"}])),
            400,
            "missing_content",
        ),
        json_case(
            "system content null",
            with(ok_body(), "messages", json!([{"role": "system", "content": null}])),
            400,
            "missing_content",
        ),
        json_case(
            "tool message without tool_call_id",
            with(
                ok_body(),
                "messages",
                json!([{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]),
            ),
            400,
            "missing_tool_call_id",
        ),
        // Limits.
        json_case("max_tokens negative", with(ok_body(), "max_tokens", json!(-1)), 400, schema),
        json_case("max_tokens zero", with(ok_body(), "max_tokens", json!(0)), 400, inv),
        json_case(
            "max_tokens absurd",
            with(ok_body(), "max_tokens", json!(1_000_000_000_000u64)),
            400,
            inv,
        ),
        json_case("max_tokens fractional", with(ok_body(), "max_tokens", json!(1.5)), 400, schema),
        case(
            "max_tokens past u64",
            &br#"{"model":"auto","messages":[{"role":"user","content":"x"}],"max_tokens":100000000000000000000000}"#[..],
            400,
            schema,
        ),
        json_case(
            "max_completion_tokens absurd",
            with(ok_body(), "max_completion_tokens", json!(u64::MAX)),
            400,
            inv,
        ),
        json_case("temperature too high", with(ok_body(), "temperature", json!(5)), 400, inv),
        json_case("temperature negative", with(ok_body(), "temperature", json!(-0.1)), 400, inv),
        json_case("top_p over 1", with(ok_body(), "top_p", json!(1.5)), 400, inv),
        case(
            "temperature overflowing to infinity",
            &br#"{"model":"auto","messages":[{"role":"user","content":"x"}],"temperature":1e999}"#[..],
            400,
            schema,
        ),
        json_case(
            "unknown response_format",
            with(ok_body(), "response_format", json!({"type": "xml"})),
            400,
            inv,
        ),
        // Unknown model and task.
        json_case("unknown model", with(ok_body(), "model", json!("gpt-9")), 404, "model_not_found"),
        json_case(
            "unknown task hint",
            with(ok_body(), "ladder", json!({"task": "poetry"})),
            400,
            "invalid_task",
        ),
        // Bad hints.
        json_case("hints not an object", with(ok_body(), "ladder", json!("fast")), 400, schema),
        json_case(
            "unknown hint field",
            with(ok_body(), "ladder", json!({"speed": "fast"})),
            400,
            schema,
        ),
        json_case("task hint a number", with(ok_body(), "ladder", json!({"task": 3})), 400, schema),
        json_case(
            "max_cost_usd negative",
            with(ok_body(), "ladder", json!({"max_cost_usd": -1})),
            400,
            inv,
        ),
        json_case("max_cost_usd zero", with(ok_body(), "ladder", json!({"max_cost_usd": 0})), 400, inv),
        json_case(
            "max_cost_usd a string",
            with(ok_body(), "ladder", json!({"max_cost_usd": "1"})),
            400,
            schema,
        ),
        json_case("min_quality 1.5", with(ok_body(), "ladder", json!({"min_quality": 1.5})), 400, inv),
        json_case("min_quality 0", with(ok_body(), "ladder", json!({"min_quality": 0})), 400, inv),
        json_case("models empty", with(ok_body(), "ladder", json!({"models": []})), 400, inv),
        json_case(
            "models unknown",
            with(ok_body(), "ladder", json!({"models": ["gpt-9"]})),
            400,
            "model_not_found",
        ),
        json_case(
            "models not a list",
            with(ok_body(), "ladder", json!({"models": "cheap"})),
            400,
            schema,
        ),
        json_case(
            "max cost under every model",
            with(ok_body(), "ladder", json!({"max_cost_usd": 1e-12})),
            400,
            "no_eligible_model",
        ),
        // Wrong content types (the body itself is fine).
        Case {
            content_type: "text/plain",
            ..json_case("text/plain", ok_body(), 415, "unsupported_media_type")
        },
        Case {
            content_type: "application/x-www-form-urlencoded",
            ..json_case("form content type", ok_body(), 415, "unsupported_media_type")
        },
        Case {
            content_type: "multipart/form-data; boundary=x",
            ..json_case("multipart content type", ok_body(), 415, "unsupported_media_type")
        },
        // Headers.
        Case {
            headers: vec![("x-ladder-task", b"poetry".to_vec())],
            ..json_case("unknown task header", ok_body(), 400, "invalid_task")
        },
        Case {
            headers: vec![("x-ladder-task", b"caf\xe9".to_vec())],
            ..json_case("non-ASCII task header", ok_body(), 400, "invalid_task")
        },
    ];
    // Deep nesting: the parser's recursion limit refuses it (no stack overflow).
    let deep = 100_000;
    c.push(case("100k nested arrays", nested("[", "]", deep, ""), 400, schema));
    c.push(case("100k nested objects", nested("{\"a\":", "}", deep, "1"), 400, schema));
    for (field, wrap) in [
        ("content", "{\"model\":\"auto\",\"messages\":[{\"role\":\"user\",\"content\":"),
        (
            "an unknown field",
            "{\"model\":\"auto\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"extra\":",
        ),
        (
            "tools",
            "{\"model\":\"auto\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":",
        ),
        (
            "a message field",
            "{\"model\":\"auto\",\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"meta\":",
        ),
    ] {
        let mut body = wrap.to_string();
        body.push_str(&nested("[", "]", deep, ""));
        body.push_str(if matches!(field, "content" | "a message field") {
            "}]}"
        } else {
            "}"
        });
        c.push(case(&format!("100k nested arrays in {field}"), body, 400, schema));
    }
    // Nesting just under the limit is fine JSON and must not crash either (any 4xx or a 200).
    c
}

async fn send(gw: &Gateway, path: &str, c: &Case) -> Reply {
    let mut rb = gw
        .http
        .post(format!("{}{path}", gw.url))
        .header("content-type", c.content_type)
        .body(c.body.clone());
    for (k, v) in &c.headers {
        rb = rb.header(*k, reqwest::header::HeaderValue::from_bytes(v).unwrap());
    }
    let resp = rb.send().await.unwrap_or_else(|e| panic!("{}: {e}", c.name));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
        text,
        elapsed: std::time::Duration::ZERO,
    }
}

fn check(c: &Case, path: &str, r: &Reply) {
    let what = format!("{} ({path}): {} {}", c.name, r.status, &r.text[..r.text.len().min(400)]);
    assert!((400..500).contains(&r.status), "{what}");
    if let Some(s) = c.status {
        assert_eq!(r.status, s, "{what}");
    }
    let (kind, code, message) = r.api_error();
    assert!(!kind.is_empty() && message.len() > 10, "{what}");
    if let Some(expected) = c.code {
        assert_eq!(code, expected, "{what}");
    }
}

#[tokio::test]
async fn bad_requests_get_4xx_in_openai_shape_and_the_server_stays_healthy() {
    let gw = Gateway::start().await;
    for c in corpus() {
        for path in ["/v1/chat/completions", "/v1/route"] {
            let r = send(&gw, path, &c).await;
            check(&c, path, &r);
        }
    }
    // Streaming requests go through the same checks.
    for c in corpus().into_iter().filter(|c| c.json && c.content_type == "application/json") {
        let Ok(mut v) = serde_json::from_slice::<Value>(&c.body) else {
            continue;
        };
        if !v.is_object() || v.get("stream").is_some() {
            continue;
        }
        v["stream"] = json!(true);
        let c = Case {
            body: serde_json::to_vec(&v).unwrap(),
            ..c
        };
        let r = send(&gw, "/v1/chat/completions", &c).await;
        check(&c, "stream", &r);
    }
    // Nesting under the parser's limit: valid JSON in pass-through fields is accepted.
    let mut body = ok_body();
    body["metadata_blob"] = serde_json::from_str(&nested("[", "]", 100, "")).unwrap();
    let r = gw.chat(&body).await;
    assert!(r.status == 200 || (400..500).contains(&r.status), "{}", r.text);

    assert_eq!(gw.fake_stats().await["total"], 0, "no bad request reached an upstream");
    assert_healthy(&gw).await;
}

async fn assert_healthy(gw: &Gateway) {
    let alive = std::process::Command::new("kill")
        .args(["-0", &gw.ladder.pid().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(alive, "ladder died");
    assert_eq!(gw.get("/healthz").await.status, 200);
    let r = gw.chat(&ok_body()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let logs = gw.ladder.logs();
    assert!(!logs.contains("panicked"), "ladder panicked:\n{logs}");
}

/// Past `server.max_body_bytes`: 413, even when the client is still sending a 10 MB body.
#[tokio::test]
async fn oversized_bodies_get_413() {
    let gw = Gateway::start().await; // 1 MiB limit
    let big = serde_json::to_vec(&req("auto", &"x".repeat(10 * 1024 * 1024))).unwrap();
    for path in ["/v1/chat/completions", "/v1/route"] {
        let c = case("10 MB body", big.clone(), 413, "request_too_large");
        let r = send(&gw, path, &c).await;
        check(&c, path, &r);
        assert!(r.api_error().2.contains("1048576"), "{}", r.text);
    }
    // A declared length over the limit is refused too (the body is streamed, no content-length).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let resp = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("chunked upload");
    assert_eq!(resp.status(), 413);
    assert_healthy(&gw).await;
}

/// A ~1M-token prompt (4 MB) under a raised body limit: no model's context window takes it, so
/// it is refused with `context_length_exceeded` (and without running the classifier on it).
#[tokio::test]
async fn a_million_token_prompt_is_context_length_exceeded() {
    let gw = Gateway::start_with(Opts {
        max_body_bytes: 8 * 1024 * 1024,
        ..Opts::default()
    })
    .await;
    let words = "lorem ipsum dolor sit amet ".repeat(4 * 1024 * 1024 / 27);
    for model in ["auto", "top", "cheap"] {
        let body = req(model, &words);
        let c = json_case(&format!("4 MB prompt to {model}"), body, 400, "context_length_exceeded");
        let r = send(&gw, "/v1/chat/completions", &c).await;
        check(&c, model, &r);
        assert_eq!(r.body["error"]["param"], "messages");
        let rec = gw.record_of(&r.headers).await;
        assert_eq!(rec["outcome"], "rejected");
        assert!(rec["error"].as_str().unwrap().contains("context window"), "{}", rec["error"]);
        assert!(rec["scores"]["source"].to_string().contains("not scored"), "{}", rec["scores"]);
    }
    assert_eq!(gw.fake_stats().await["total"], 0);
    assert_healthy(&gw).await;
}
