//! Gateway integration tests: `ladder serve` in front of `ladder fake-provider`, both real
//! processes on loopback ports, driven over HTTP.
//!
//! Every test starts its own pair (see `common`), so tests run in parallel. The catalogue has three
//! rungs, `cheap` (OpenAI kind) < `mid` (Anthropic kind) < `top` (OpenAI kind); `auto` routes chat
//! prompts to `cheap` first and climbs from there. The Gemini tests put `mid` on the Gemini API. Each test checks the HTTP response and the
//! decision record read back through `GET /v1/decisions/{id}`.

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const PROMPT: &str = "Say hello to the integration tests.";

fn assert_cost(record: &Value, attempt: usize, input_price: f64, output_price: f64) {
    let a = &record["attempts"][attempt];
    let p = a["prompt_tokens"].as_u64().unwrap() as f64;
    let c = a["completion_tokens"].as_u64().unwrap() as f64;
    assert!(p > 0.0 && c > 0.0, "attempt {attempt} has no token counts: {record}");
    let expected = (p * input_price + c * output_price) / 1e6;
    let got = a["cost_usd"].as_f64().unwrap();
    assert!((got - expected).abs() < 1e-12, "cost {got} != {expected}");
    let total: f64 = record["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["cost_usd"].as_f64().unwrap())
        .sum();
    assert!(
        (record["total_cost_usd"].as_f64().unwrap() - total).abs() < 1e-12,
        "total_cost_usd: {record}"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Success, non-streaming and streaming, via `auto` and via named models, both provider kinds.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn non_stream_success_auto_named_and_anthropic() {
    let gw = Gateway::start().await;

    // auto -> cheap (OpenAI kind).
    let r = gw.chat(&req("auto", PROMPT)).await;
    assert_openai_completion(&r, "cheap");
    assert_eq!(r.attempts(), 1);
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(rec["requested_model"], "auto");
    assert_eq!(rec["stream"], false);
    assert_eq!(rec["outcome"], "success");
    assert_eq!(rec["http_status"], 200);
    assert_eq!(rec["final_model"], "cheap");
    assert_eq!(rec["task"], "chat");
    assert_eq!(rec["task_source"], "default");
    assert_eq!(chain(&rec), ["cheap", "mid", "top"]);
    assert_eq!(attempt_summary(&rec), ["cheap:ok"]);
    assert_eq!(rec["attempts"][0]["provider"], "fake-openai");
    assert_eq!(rec["attempts"][0]["http_status"], 200);
    let (p, c, _) = usage_of(&r.body);
    assert_eq!(rec["attempts"][0]["prompt_tokens"], p);
    assert_eq!(rec["attempts"][0]["completion_tokens"], c);
    assert_cost(&rec, 0, 0.1, 0.2);
    assert!(rec["prompt"].as_str().is_some_and(|s| s.contains(PROMPT)), "{rec}");
    assert_eq!(rec["candidates"].as_array().unwrap().len(), 3);

    // Named OpenAI-kind model: its upstream id is sent, Ladder's hints are not.
    let mut body = req("top", PROMPT);
    body["ladder"] = json!({"task": "chat"});
    let r = gw.chat(&body).await;
    assert_openai_completion(&r, "top");
    assert_eq!(r.attempts(), 1);
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(rec["requested_model"], "top");
    assert_eq!(rec["outcome"], "success");
    assert_eq!(rec["task_source"], "hint");
    assert_eq!(chain(&rec), ["top"]);
    assert_eq!(attempt_summary(&rec), ["top:ok"]);
    assert_cost(&rec, 0, 10.0, 30.0);
    let log = gw.fake_requests_log().await;
    let sent = &log.last().expect("the fake saw the request")["body"];
    assert_eq!(sent["model"], UP_TOP);
    assert!(sent.get("ladder").is_none(), "ladder hints were forwarded upstream: {sent}");

    // Named Anthropic-kind model: translated both ways.
    let r = gw.chat(&req("mid", PROMPT)).await;
    assert_openai_completion(&r, "mid");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(rec["outcome"], "success");
    assert_eq!(attempt_summary(&rec), ["mid:ok"]);
    assert_eq!(rec["attempts"][0]["provider"], "fake-anthropic");
    assert_cost(&rec, 0, 1.0, 5.0);

    let stats = gw.fake_stats().await;
    assert_eq!(stats["models"][UP_CHEAP]["openai_requests"], 1, "{stats}");
    assert_eq!(stats["models"][UP_TOP]["openai_requests"], 1, "{stats}");
    assert_eq!(stats["models"][UP_MID]["anthropic_requests"], 1, "{stats}");
    assert_eq!(stats["total"], 3);
    assert_eq!(stats["rejected"], 0, "the fake rejected a request Ladder sent: {stats}");
}

#[tokio::test]
async fn stream_success_auto_named_and_anthropic() {
    let gw = Gateway::start().await;

    // auto -> cheap, no usage asked for.
    let s = gw.stream(&req("auto", PROMPT)).await;
    assert_stream_shape(&s, "cheap", false);
    assert_eq!(s.attempts(), 1);
    let rec = gw.record_of(&s.headers).await;
    assert_eq!(rec["stream"], true);
    assert_eq!(rec["outcome"], "success");
    assert_eq!(rec["final_model"], "cheap");
    assert_eq!(attempt_summary(&rec), ["cheap:ok"]);
    assert_cost(&rec, 0, 0.1, 0.2);
    // Same prompt, same fake model: the stream carries exactly the non-streamed answer.
    let whole = gw.chat(&req("cheap", PROMPT)).await;
    assert_eq!(s.content(), whole.content());

    // auto with include_usage.
    let mut body = req("auto", PROMPT);
    body["stream_options"] = json!({"include_usage": true});
    let s = gw.stream(&body).await;
    assert_stream_shape(&s, "cheap", true);
    let rec = gw.record_of(&s.headers).await;
    let usage = s.chunks().last().unwrap().clone();
    assert_eq!(rec["attempts"][0]["completion_tokens"], usage["usage"]["completion_tokens"]);
    assert_eq!(rec["attempts"][0]["prompt_tokens"], usage["usage"]["prompt_tokens"]);

    // Named OpenAI-kind model, with usage.
    let mut body = req("top", PROMPT);
    body["stream_options"] = json!({"include_usage": true});
    let s = gw.stream(&body).await;
    assert_stream_shape(&s, "top", true);
    let rec = gw.record_of(&s.headers).await;
    assert_eq!(attempt_summary(&rec), ["top:ok"]);
    assert_cost(&rec, 0, 10.0, 30.0);

    // Anthropic kind, without and with usage; content matches its non-streamed answer.
    let s = gw.stream(&req("mid", PROMPT)).await;
    assert_stream_shape(&s, "mid", false);
    let rec = gw.record_of(&s.headers).await;
    assert_eq!(rec["outcome"], "success");
    assert_eq!(attempt_summary(&rec), ["mid:ok"]);
    assert_cost(&rec, 0, 1.0, 5.0);
    let whole = gw.chat(&req("mid", PROMPT)).await;
    assert_eq!(s.content(), whole.content());
    let mut body = req("mid", PROMPT);
    body["stream_options"] = json!({"include_usage": true});
    let s = gw.stream(&body).await;
    assert_stream_shape(&s, "mid", true);
    let u = s.chunks().last().unwrap()["usage"].clone();
    assert_eq!(u["completion_tokens"], whole.body["usage"]["completion_tokens"]);

    let stats = gw.fake_stats().await;
    assert_eq!(stats["rejected"], 0, "the fake rejected a request Ladder sent: {stats}");
    assert_eq!(stats["models"][UP_MID]["stream_requests"], 2, "{stats}");
}

// ---------------------------------------------------------------------------------------------
// 2. Fallback to the next rung on each failure kind, non-streaming and streaming.
// ---------------------------------------------------------------------------------------------

/// `cheap` fails with `behavior` on every request; the client must get a 200 from `mid`, and the
/// record must list the failed attempts (two when the failure is retried on the same model).
async fn fallback_case(behavior: Value, kind: &str, stream_kind: Option<&str>, retried: bool, tweak: impl FnOnce(&mut Opts)) {
    let mut opts = Opts::default();
    tweak(&mut opts);
    let connect_refused = opts.models[0].provider == "dead";
    let gw = Gateway::start_with(opts).await;
    gw.set_scenario(always(UP_CHEAP, behavior.clone())).await;
    let tries = if retried { 2 } else { 1 };

    let expect = |k: &str| {
        let mut v: Vec<String> = (0..tries).map(|_| format!("cheap:error:{k}")).collect();
        v.push("mid:ok".into());
        v
    };

    let r = gw.chat(&req("auto", PROMPT)).await;
    assert_openai_completion(&r, "mid");
    assert_eq!(r.attempts(), tries + 1);
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(attempt_summary(&rec), expect(kind), "behavior {behavior}: {rec}");
    assert_eq!(rec["outcome"], "escalated");
    assert_eq!(rec["http_status"], 200);
    assert_eq!(rec["final_model"], "mid");
    if let Some(code) = kind.strip_prefix("http_") {
        assert_eq!(rec["attempts"][0]["http_status"], code.parse::<u64>().unwrap());
    }
    assert!(rec["attempts"][0]["reason"].as_str().is_some_and(|s| !s.is_empty()), "{rec}");
    if !connect_refused {
        assert_eq!(gw.upstream_requests(UP_CHEAP).await, tries as u64, "requests that reached cheap");
    }

    if let Some(skind) = stream_kind {
        let s = gw.stream(&req("auto", PROMPT)).await;
        assert_stream_shape(&s, "mid", false);
        assert_eq!(s.attempts(), tries + 1);
        let rec = gw.record_of(&s.headers).await;
        assert_eq!(attempt_summary(&rec), expect(skind), "streaming, behavior {behavior}: {rec}");
        assert_eq!(rec["outcome"], "escalated");
        assert_eq!(rec["final_model"], "mid");
        if !connect_refused {
            assert_eq!(gw.upstream_requests(UP_CHEAP).await, 2 * tries as u64);
        }
    }
}

#[tokio::test]
async fn fallback_on_500() {
    fallback_case(status(500), "http_500", Some("http_500"), true, |_| {}).await;
}

#[tokio::test]
async fn fallback_on_502() {
    fallback_case(status(502), "http_502", Some("http_502"), true, |_| {}).await;
}

#[tokio::test]
async fn fallback_on_503() {
    fallback_case(status(503), "http_503", Some("http_503"), true, |_| {}).await;
}

#[tokio::test]
async fn fallback_on_429_without_retry_after() {
    fallback_case(status(429), "http_429", Some("http_429"), true, |_| {}).await;
}

#[tokio::test]
async fn fallback_on_connection_refused() {
    fallback_case(json!({"kind": "ok"}), "connect_error", Some("connect_error"), true, |o| {
        o.model_mut("cheap").provider = "dead"
    })
    .await;
}

#[tokio::test]
async fn fallback_on_hang_past_attempt_timeout() {
    fallback_case(json!({"kind": "hang"}), "timeout_attempt", Some("timeout_first_byte"), false, |o| {
        o.attempt_ms = 600;
        o.first_byte_ms = 600;
    })
    .await;
}

#[tokio::test]
async fn fallback_on_malformed_json() {
    fallback_case(
        json!({"kind": "malformed_json"}),
        "malformed_response",
        Some("malformed_response"),
        false,
        |_| {},
    )
    .await;
}

#[tokio::test]
async fn fallback_on_wrong_content_type() {
    fallback_case(
        json!({"kind": "wrong_content_type"}),
        "malformed_response",
        Some("malformed_response"),
        false,
        |_| {},
    )
    .await;
}

#[tokio::test]
async fn fallback_on_connection_reset() {
    fallback_case(json!({"kind": "reset"}), "connect_error", Some("connect_error"), true, |_| {}).await;
}

#[tokio::test]
async fn fallback_on_oversized_body() {
    // Past providers::MAX_RESPONSE_BYTES (16 MiB); the stream gets the same bytes as one SSE
    // comment line, past providers::sse::MAX_EVENT_BYTES (1 MiB).
    fallback_case(
        json!({"kind": "oversized", "bytes": 17 * 1024 * 1024}),
        "oversized_response",
        Some("oversized_response"),
        false,
        |_| {},
    )
    .await;
}

#[tokio::test]
async fn fallback_from_anthropic_rung_to_the_next() {
    let gw = Gateway::start().await;
    // 529 (Anthropic's "overloaded") and a wrong content type on the Anthropic-kind rung.
    for (behavior, kind, tries) in [
        (status(529), "http_529", 2),
        (json!({"kind": "wrong_content_type"}), "malformed_response", 1),
    ] {
        gw.set_scenario(always(UP_MID, behavior)).await;
        let mut expect: Vec<String> = (0..tries).map(|_| format!("mid:error:{kind}")).collect();
        expect.push("top:ok".into());
        let r = gw.chat(&req("mid", PROMPT)).await;
        assert_openai_completion(&r, "top");
        let rec = gw.record_of(&r.headers).await;
        assert_eq!(attempt_summary(&rec), expect);
        assert_eq!(rec["outcome"], "escalated");
        let s = gw.stream(&req("mid", PROMPT)).await;
        assert_stream_shape(&s, "top", false);
        let rec = gw.record_of(&s.headers).await;
        assert_eq!(attempt_summary(&rec), expect);
    }
}

// ---------------------------------------------------------------------------------------------
// 2b. A Gemini-kind rung (`Opts::gemini_mid`: cheap (OpenAI) < mid (Gemini) < top (OpenAI)).
// ---------------------------------------------------------------------------------------------

/// The body of the last request that reached the fake, with the API it came through.
async fn last_upstream(gw: &Gateway) -> (String, Value) {
    let log = gw.fake_requests_log().await;
    let last = log.last().expect("the fake saw a request");
    (last["api"].as_str().unwrap_or("?").to_string(), last["body"].clone())
}

#[tokio::test]
async fn gemini_rung_non_stream_and_stream_success() {
    let gw = Gateway::start_with(Opts::gemini_mid()).await;
    let body = json!({"model": "mid", "temperature": 0.3, "max_tokens": 200, "stop": ["\n\n\n"], "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "An earlier question."},
        {"role": "assistant", "content": "An earlier answer."},
        {"role": "user", "content": PROMPT},
    ]});
    let r = gw.chat(&body).await;
    assert_openai_completion(&r, "mid");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(attempt_summary(&rec), ["mid:ok"]);
    assert_eq!(rec["outcome"], "success");
    assert_eq!(rec["attempts"][0]["provider"], "fake-gemini");
    let (p, c, _) = usage_of(&r.body);
    assert_eq!(rec["attempts"][0]["prompt_tokens"], p);
    assert_eq!(rec["attempts"][0]["completion_tokens"], c);
    assert_cost(&rec, 0, 1.0, 5.0);

    // What went upstream: Gemini's own request shape, to the Gemini endpoint of the upstream id.
    let (api, sent) = last_upstream(&gw).await;
    assert_eq!(api, "gemini");
    assert_eq!(sent["systemInstruction"], json!({"parts": [{"text": "You are terse."}]}));
    let roles: Vec<&str> = sent["contents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "model", "user"]);
    assert_eq!(sent["contents"][2]["parts"][0]["text"], PROMPT);
    assert_eq!(
        sent["generationConfig"],
        json!({"temperature": 0.3, "maxOutputTokens": 200, "stopSequences": ["\n\n\n"]})
    );
    let stats = gw.fake_stats().await;
    assert_eq!(stats["models"][UP_MID]["gemini_requests"], 1, "{stats}");
    assert_eq!(stats["models"][UP_MID]["completion_tokens"], c, "the fake's own count: {stats}");

    // Streamed, without and with usage: the same answer, the same usage and cost.
    let s = gw.stream(&body).await;
    assert_stream_shape(&s, "mid", false);
    assert_eq!(s.content(), r.content());
    let rec = gw.record_of(&s.headers).await;
    assert_eq!(attempt_summary(&rec), ["mid:ok"]);
    assert_eq!(rec["attempts"][0]["completion_tokens"], c);
    assert_cost(&rec, 0, 1.0, 5.0);
    let mut with_usage = body.clone();
    with_usage["stream_options"] = json!({"include_usage": true});
    let s = gw.stream(&with_usage).await;
    assert_stream_shape(&s, "mid", true);
    assert_eq!(s.chunks().last().unwrap()["usage"], r.body["usage"]);

    // `auto` climbs from cheap through the Gemini rung.
    gw.set_scenario(always(UP_CHEAP, status(503))).await;
    let r = gw.chat(&req("auto", PROMPT)).await;
    assert_openai_completion(&r, "mid");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(attempt_summary(&rec), ["cheap:error:http_503", "cheap:error:http_503", "mid:ok"]);

    let stats = gw.fake_stats().await;
    assert_eq!(stats["models"][UP_MID]["gemini_requests"], 4, "{stats}");
    assert_eq!(stats["models"][UP_MID]["stream_requests"], 2, "{stats}");
    assert_eq!(stats["rejected"], 0, "the fake rejected a request Ladder sent: {stats}");
}

#[tokio::test]
async fn fallback_from_a_gemini_rung_to_the_next() {
    let gw = Gateway::start_with(Opts::gemini_mid()).await;
    for (behavior, kind, tries) in [
        (status(503), "http_503", 2),
        (status(500), "http_500", 2),
        (status(429), "http_429", 2),
        (json!({"kind": "malformed_json"}), "malformed_response", 1),
        (json!({"kind": "wrong_content_type"}), "malformed_response", 1),
        (json!({"kind": "reset"}), "connect_error", 2),
    ] {
        gw.set_scenario(always(UP_MID, behavior.clone())).await;
        let mut expect: Vec<String> = (0..tries).map(|_| format!("mid:error:{kind}")).collect();
        expect.push("top:ok".into());
        let r = gw.chat(&req("mid", PROMPT)).await;
        assert_openai_completion(&r, "top");
        let rec = gw.record_of(&r.headers).await;
        assert_eq!(attempt_summary(&rec), expect, "{behavior}");
        assert_eq!(rec["outcome"], "escalated");
        let s = gw.stream(&req("mid", PROMPT)).await;
        assert_stream_shape(&s, "top", false);
        assert_eq!(attempt_summary(&gw.record_of(&s.headers).await), expect, "streaming, {behavior}");
    }

    // Answers that fail Ladder's checks: an empty candidate, MAX_TOKENS (finish_reason length
    // although the caller set no limit), a refusal.
    for (style, check) in [("empty", "empty_content"), ("truncated", "truncated"), ("refusal", "refusal")] {
        gw.set_scenario(always(UP_MID, json!({"kind": "bad", "style": style}))).await;
        let r = gw.chat(&req("mid", PROMPT)).await;
        assert_openai_completion(&r, "top");
        let expect = [format!("mid:check_failed:{check}"), "top:ok".to_string()];
        assert_eq!(attempt_summary(&gw.record_of(&r.headers).await), expect, "{style}");
        if style == "empty" {
            let s = gw.stream(&req("mid", PROMPT)).await;
            assert_stream_shape(&s, "top", false);
            assert_eq!(attempt_summary(&gw.record_of(&s.headers).await), expect, "streaming, {style}");
        }
    }

    // A stream cut before its first output falls back; one cut after it ends with an error event.
    gw.set_scenario(always(UP_MID, json!({"kind": "drop_stream", "after_chunks": 0})))
        .await;
    let s = gw.stream(&req("mid", PROMPT)).await;
    assert_stream_shape(&s, "top", false);
    assert_eq!(
        attempt_summary(&gw.record_of(&s.headers).await),
        ["mid:error:stream_error", "top:ok"]
    );
    gw.set_scenario(always(UP_MID, json!({"kind": "drop_stream", "after_chunks": 2})))
        .await;
    let top_before = gw.upstream_requests(UP_TOP).await;
    let s = gw.stream(&req("mid", PROMPT)).await;
    assert_stream_error_end(&s, "mid");
    let rec = gw.record_of(&s.headers).await;
    assert_eq!(attempt_summary(&rec), ["mid:error:stream_error"]);
    assert_eq!(rec["outcome"], "stream_failed");
    assert_eq!(gw.upstream_requests(UP_TOP).await, top_before, "no fallback once output started");

    // A 400 INVALID_ARGUMENT blames the request: it goes back to the caller.
    gw.set_scenario(always(UP_MID, status(400))).await;
    let r = gw.chat(&req("mid", PROMPT)).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.api_error().1, "upstream_rejected_request");
    assert!(r.api_error().2.contains("INVALID_ARGUMENT"), "{}", r.text);
    assert_eq!(attempt_summary(&gw.record_of(&r.headers).await), ["mid:error:http_400"]);
    assert_eq!(gw.upstream_requests(UP_TOP).await, top_before);
    assert_eq!(gw.fake_stats().await["rejected"], 0);
}

#[tokio::test]
async fn gemini_rate_limits_wait_for_retry_info() {
    let gw = Gateway::start_with(Opts::gemini_mid()).await;
    // Gemini says how long to wait in the error body (RetryInfo), not in a header.
    gw.set_scenario(json!({"models": {UP_MID: {"sequence": [
        {"kind": "status", "status": 429, "retry_after_s": 1}, {"kind": "ok"}
    ]}}}))
    .await;
    let r = gw.chat(&req("mid", PROMPT)).await;
    assert_openai_completion(&r, "mid");
    assert!(r.elapsed >= Duration::from_millis(1000), "retried after {:?}", r.elapsed);
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(attempt_summary(&rec), ["mid:error:http_429", "mid:ok"]);
    let gap = rec["attempts"][1]["started_ms"].as_u64().unwrap() - rec["attempts"][0]["started_ms"].as_u64().unwrap();
    assert!(gap >= 1000, "second attempt {gap} ms after the first");
    assert!(
        rec["attempts"][0]["reason"].as_str().unwrap().contains("RESOURCE_EXHAUSTED"),
        "{rec}"
    );

    // Longer than retries.max_retry_after_ms: the next rung at once.
    gw.set_scenario(json!({"models": {UP_MID: {"sequence": [
        {"kind": "status", "status": 429, "retry_after_s": 30}
    ]}}}))
    .await;
    let r = gw.chat(&req("mid", PROMPT)).await;
    assert_openai_completion(&r, "top");
    assert!(r.elapsed < Duration::from_millis(1500), "waited {:?}", r.elapsed);
    assert_eq!(attempt_summary(&gw.record_of(&r.headers).await), ["mid:error:http_429", "top:ok"]);
}

#[tokio::test]
async fn a_bad_gemini_key_escalates_and_never_leaks() {
    let secret = format!("AIza-leaktest-{}", uuid::Uuid::new_v4().simple());
    let gw = Gateway::start_with(Opts {
        provider_key_env: Some("LADDER_TEST_UPSTREAM_KEY"),
        gemini_key_env: Some("LADDER_TEST_GEMINI_KEY"),
        env: vec![
            ("LADDER_TEST_UPSTREAM_KEY".into(), "the-right-key".into()),
            ("LADDER_TEST_GEMINI_KEY".into(), secret.clone()),
        ],
        scenario: "seed = 1\napi_key = \"the-right-key\"\necho_api_key = true\n".into(),
        ..Opts::gemini_mid()
    })
    .await;
    // Gemini answers a bad key with 400 API_KEY_INVALID (echoing it, here): not the caller's fault.
    let mut texts = Vec::new();
    let r = gw.chat(&req("mid", PROMPT)).await;
    assert_openai_completion(&r, "top");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(attempt_summary(&rec), ["mid:error:http_401", "top:ok"]);
    let reason = rec["attempts"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("API_KEY_INVALID") && reason.contains("[redacted]"), "{reason}");
    texts.push(r.text);
    texts.push(rec.to_string());
    let s = gw.stream(&req("mid", PROMPT)).await;
    assert_stream_shape(&s, "top", false);
    let rec = gw.record_of(&s.headers).await;
    assert_eq!(attempt_summary(&rec), ["mid:error:http_401", "top:ok"]);
    texts.push(s.raw);
    texts.push(rec.to_string());
    // Both Gemini requests carried a key, the wrong one (a missing key would be a 403).
    assert_eq!(gw.fake_stats().await["rejected"], 2);
    texts.push(gw.ladder.logs());
    for t in &texts {
        assert!(!t.contains(&secret), "the Gemini key leaked: {t}");
    }
}

#[tokio::test]
async fn gemini_tool_calls_round_trip() {
    let gw = Gateway::start_with(Opts::gemini_mid()).await;
    let tools = json!([{"type": "function", "function": {
        "name": "lookup",
        "description": "Look something up",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"], "additionalProperties": false}
    }}]);
    let mut body = req("mid", "Look up the weather in Paris.");
    body["tools"] = tools.clone();
    body["tool_choice"] = json!("required");
    let r = gw.chat(&body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["choices"][0]["finish_reason"], "tool_calls");
    let message = r.body["choices"][0]["message"].clone();
    let call = &message["tool_calls"][0];
    let id = call["id"].as_str().unwrap().to_string();
    assert!(
        id.starts_with("call_") && id.len() <= 40 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "an id OpenAI and Anthropic upstreams accept too: {id}"
    );
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "lookup");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["q"].is_string(), "{args}");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(attempt_summary(&rec), ["mid:ok"]);
    assert_cost(&rec, 0, 1.0, 5.0);
    let (_, sent) = last_upstream(&gw).await;
    let decl = &sent["tools"][0]["functionDeclarations"][0];
    assert_eq!(decl["name"], "lookup");
    assert_eq!(
        decl["parametersJsonSchema"]["additionalProperties"], false,
        "JSON Schema as is: {sent}"
    );
    assert_eq!(sent["toolConfig"], json!({"functionCallingConfig": {"mode": "ANY"}}));

    // Streamed: the call arrives whole, then finish_reason tool_calls.
    let s = gw.stream(&body).await;
    assert_eq!(s.status, 200, "{}", s.raw);
    assert!(s.done(), "{}", s.raw);
    let calls: Vec<Value> = s
        .chunks()
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1, "{}", s.raw);
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["function"]["name"], "lookup");
    assert_eq!(
        serde_json::from_str::<Value>(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap(),
        args
    );
    assert!(
        s.chunks().iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"),
        "{}",
        s.raw
    );

    // The conversation goes on with the tool's result: the call goes back with the thought
    // signature the upstream gave it, the result as a functionResponse named after the call.
    let follow = |model: &str, message: &Value, id: &str| {
        json!({"model": model, "tools": tools, "messages": [
            {"role": "user", "content": "Look up the weather in Paris."},
            message,
            {"role": "tool", "tool_call_id": id, "content": "{\"temp_c\": 18}"},
        ]})
    };
    let r = gw.chat(&follow("mid", &message, &id)).await;
    assert_openai_completion(&r, "mid");
    let (_, sent) = last_upstream(&gw).await;
    let part = &sent["contents"][1]["parts"][0];
    assert_eq!(part["functionCall"]["name"], "lookup");
    assert!(
        part["thoughtSignature"].as_str().is_some_and(|s| s.starts_with("ZmFrZS10aG91Z2h0")),
        "the fake's own signature came back: {part}"
    );
    assert_eq!(
        sent["contents"][2]["parts"][0],
        json!({"functionResponse": {"name": "lookup", "response": {"temp_c": 18}}})
    );

    // A call some other model made: Google's placeholder signature.
    let mut foreign = message.clone();
    foreign["tool_calls"][0]["id"] = json!("call_made_elsewhere");
    let r = gw.chat(&follow("mid", &foreign, "call_made_elsewhere")).await;
    assert_openai_completion(&r, "mid");
    let (_, sent) = last_upstream(&gw).await;
    assert_eq!(
        sent["contents"][1]["parts"][0]["thoughtSignature"],
        "skip_thought_signature_validator"
    );

    // And the Gemini-made call can move on to an OpenAI-kind rung.
    let r = gw.chat(&follow("top", &message, &id)).await;
    assert_openai_completion(&r, "top");
    assert_eq!(gw.fake_stats().await["rejected"], 0);
}

#[tokio::test]
async fn what_gemini_cannot_take_goes_to_the_next_rung() {
    let gw = Gateway::start_with(Opts::gemini_mid()).await;
    let image = |url: &str| {
        json!({"model": "mid", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": url}},
        ]}]})
    };
    // A plain-http URL: Gemini fetches only https. Nothing is sent; the next rung answers.
    let r = gw.chat(&image("http://images.example/cat")).await;
    assert_openai_completion(&r, "top");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(attempt_summary(&rec), ["mid:error:unsupported_request", "top:ok"]);
    assert!(rec["attempts"][0]["http_status"].is_null());
    assert_eq!(gw.upstream_requests(UP_MID).await, 0, "nothing went to the Gemini upstream");
    assert_eq!(gw.circuit("mid").await, "closed");

    // With only the Gemini rung allowed, the caller learns why.
    let mut only_mid = image("http://images.example/cat");
    only_mid["ladder"] = json!({"models": ["mid"]});
    let r = gw.chat(&only_mid).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let (kind, code, message) = r.api_error();
    assert_eq!((kind.as_str(), code.as_str()), ("invalid_request_error", "unsupported_request"));
    assert!(message.contains("https://"), "{message}");

    // Data URLs and https URLs with a known type are sent (inlineData, fileData).
    let r = gw.chat(&image("data:image/png;base64,iVBORw0KGgo=")).await;
    assert_openai_completion(&r, "mid");
    let (_, sent) = last_upstream(&gw).await;
    assert_eq!(
        sent["contents"][0]["parts"][1],
        json!({"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}})
    );
    let r = gw.chat(&image("https://images.example/cat.webp")).await;
    assert_openai_completion(&r, "mid");
    let (_, sent) = last_upstream(&gw).await;
    assert_eq!(sent["contents"][0]["parts"][1]["fileData"]["mimeType"], "image/webp");
    assert_eq!(gw.fake_stats().await["rejected"], 0);
}

#[tokio::test]
async fn upstream_client_errors_are_not_escalated_and_exhaustion_is_reported() {
    let gw = Gateway::start().await;

    // A 400 from the upstream blames the request: another model would refuse it too.
    gw.set_scenario(always(UP_CHEAP, status(400))).await;
    let r = gw.chat(&req("auto", PROMPT)).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let (kind, code, _) = r.api_error();
    assert_eq!(
        (kind.as_str(), code.as_str()),
        ("invalid_request_error", "upstream_rejected_request")
    );
    assert_eq!(r.model(), None);
    assert_eq!(r.attempts(), 1);
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(attempt_summary(&rec), ["cheap:error:http_400"]);
    assert_eq!(rec["outcome"], "failed");
    assert_eq!(rec["http_status"], 400);
    assert_eq!(gw.upstream_requests(UP_MID).await, 0);

    // Every rung rate limited -> 429 in OpenAI's shape.
    gw.set_scenario(json!({"models": {
        UP_CHEAP: {"fail_rate": 1.0, "fail_with": status(429)},
        UP_MID: {"fail_rate": 1.0, "fail_with": status(429)},
        UP_TOP: {"fail_rate": 1.0, "fail_with": status(429)},
    }}))
    .await;
    let r = gw.chat(&req("auto", PROMPT)).await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.api_error().1, "rate_limit_exceeded");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(rec["outcome"], "failed");
    assert_eq!(rec["attempts"].as_array().unwrap().len(), 6);
    assert!(rec["final_model"].is_null());

    // Every rung down -> 502 upstream_error, streaming too.
    gw.set_scenario(json!({"models": {
        UP_CHEAP: {"fail_rate": 1.0, "fail_with": status(503)},
        UP_MID: {"fail_rate": 1.0, "fail_with": status(500)},
        UP_TOP: {"fail_rate": 1.0, "fail_with": {"kind": "malformed_json"}},
    }}))
    .await;
    let r = gw.chat(&req("auto", PROMPT)).await;
    assert_eq!(r.status, 502, "{}", r.text);
    assert_eq!(r.api_error().1, "upstream_error");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(rec["outcome"], "failed");
    assert_eq!(rec["http_status"], 502);
    let s = gw.stream(&req("auto", PROMPT)).await;
    assert_eq!(s.status, 502, "{}", s.raw);
    let rec = gw.record_of(&s.headers).await;
    assert_eq!(rec["outcome"], "failed");
}

// ---------------------------------------------------------------------------------------------
// 3. retry-after.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn retry_after_is_honoured_on_the_same_model() {
    let gw = Gateway::start().await;
    gw.set_scenario(json!({"models": {UP_CHEAP: {"sequence": [
        {"kind": "status", "status": 429, "retry_after_s": 1}, {"kind": "ok"}
    ]}}}))
    .await;
    let t0 = Instant::now();
    let r = gw.chat(&req("auto", PROMPT)).await;
    let elapsed = t0.elapsed();
    assert_openai_completion(&r, "cheap");
    assert!(
        elapsed >= Duration::from_millis(1000),
        "retried after {elapsed:?}, before retry-after"
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(r.attempts(), 2);
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(attempt_summary(&rec), ["cheap:error:http_429", "cheap:ok"]);
    let gap = rec["attempts"][1]["started_ms"].as_u64().unwrap() - rec["attempts"][0]["started_ms"].as_u64().unwrap();
    assert!(gap >= 1000, "second attempt {gap} ms after the first");
    // The first rung the router picked answered: by success_outcome's definition that is a
    // success, not an escalation.
    assert_eq!(rec["outcome"], "success");
    assert_eq!(rec["final_model"], "cheap");
    assert_eq!(gw.upstream_requests(UP_CHEAP).await, 2);

    // A retry-after beyond retries.max_retry_after_ms moves up the chain at once.
    gw.set_scenario(json!({"models": {UP_CHEAP: {"sequence": [
        {"kind": "status", "status": 429, "retry_after_s": 30}
    ]}}}))
    .await;
    let r = gw.chat(&req("auto", PROMPT)).await;
    assert_openai_completion(&r, "mid");
    assert!(r.elapsed < Duration::from_millis(1500), "waited {:?}", r.elapsed);
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(attempt_summary(&rec), ["cheap:error:http_429", "mid:ok"]);
    assert_eq!(rec["outcome"], "escalated");
}

// ---------------------------------------------------------------------------------------------
// 4. Circuit breaker.
// ---------------------------------------------------------------------------------------------

fn breaker_opts() -> Opts {
    Opts {
        failure_threshold: 2,
        cooldown_ms: 700,
        ..Opts::default()
    }
}

/// Open `cheap`'s breaker with two 503s (one request: first attempt plus its retry).
async fn open_cheap_breaker(gw: &Gateway) {
    gw.set_scenario(always(UP_CHEAP, status(503))).await;
    let r = gw.chat(&req("auto", PROMPT)).await;
    assert_openai_completion(&r, "mid");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(attempt_summary(&rec), ["cheap:error:http_503", "cheap:error:http_503", "mid:ok"]);
    assert_eq!(gw.circuit("cheap").await, "open");
    assert_eq!(gw.circuit("mid").await, "closed");
}

async fn wait_half_open(gw: &Gateway, model: &str) {
    let t0 = Instant::now();
    while gw.circuit(model).await != "half_open" {
        assert!(t0.elapsed() < Duration::from_secs(10), "{model}'s breaker never became half-open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn circuit_breaker_opens_skips_and_closes_after_a_probe() {
    let gw = Gateway::start_with(breaker_opts()).await;
    open_cheap_breaker(&gw).await;
    assert_eq!(gw.upstream_requests(UP_CHEAP).await, 2);

    // Open: skipped without a request, non-streaming and streaming.
    let r = gw.chat(&req("auto", PROMPT)).await;
    assert_openai_completion(&r, "mid");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(attempt_summary(&rec), ["cheap:skipped:circuit_open", "mid:ok"]);
    assert_eq!(rec["outcome"], "escalated");
    assert!(rec["attempts"][0]["reason"].as_str().unwrap().contains("circuit open"), "{rec}");
    let s = gw.stream(&req("auto", PROMPT)).await;
    assert_stream_shape(&s, "mid", false);
    let rec = gw.record_of(&s.headers).await;
    assert_eq!(attempt_summary(&rec), ["cheap:skipped:circuit_open", "mid:ok"]);
    assert_eq!(gw.upstream_requests(UP_CHEAP).await, 2, "an open breaker must not send requests");

    // Healthy again; after the cool-down one probe goes through and closes the breaker.
    gw.set_scenario(json!({"seed": 1})).await;
    wait_half_open(&gw, "cheap").await;
    let r = gw.chat(&req("auto", PROMPT)).await;
    assert_openai_completion(&r, "cheap");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(attempt_summary(&rec), ["cheap:ok"]);
    assert_eq!(rec["outcome"], "success");
    assert_eq!(gw.circuit("cheap").await, "closed");
    let r = gw.chat(&req("auto", PROMPT)).await;
    assert_openai_completion(&r, "cheap");
    assert_eq!(gw.upstream_requests(UP_CHEAP).await, 4);

    // A failed probe opens it again.
    open_cheap_breaker(&gw).await;
    wait_half_open(&gw, "cheap").await;
    let r = gw.chat(&req("auto", PROMPT)).await;
    assert_openai_completion(&r, "mid");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(attempt_summary(&rec)[0], "cheap:error:http_503", "the probe: {rec}");
    assert_eq!(gw.circuit("cheap").await, "open");
}

#[tokio::test]
async fn circuit_breaker_closes_after_a_streamed_probe() {
    let gw = Gateway::start_with(breaker_opts()).await;
    open_cheap_breaker(&gw).await;
    gw.set_scenario(json!({"seed": 1})).await;
    wait_half_open(&gw, "cheap").await;

    // The probe is a streaming request and succeeds.
    let s = gw.stream(&req("auto", PROMPT)).await;
    assert_stream_shape(&s, "cheap", false);
    let rec = gw.record_of(&s.headers).await;
    assert_eq!(attempt_summary(&rec), ["cheap:ok"]);
    assert_eq!(
        gw.circuit("cheap").await,
        "closed",
        "a successful streamed probe must close the breaker"
    );

    // And the model is used again, both ways.
    let r = gw.chat(&req("auto", PROMPT)).await;
    assert_openai_completion(&r, "cheap");
    assert_eq!(attempt_summary(&gw.record_of(&r.headers).await), ["cheap:ok"]);
    let s = gw.stream(&req("auto", PROMPT)).await;
    assert_stream_shape(&s, "cheap", false);
}

#[tokio::test]
async fn circuit_breaker_probe_without_a_verdict_does_not_wedge_the_breaker() {
    let gw = Gateway::start_with(breaker_opts()).await;
    open_cheap_breaker(&gw).await;

    // The half-open probe gets an upstream 400: passed to the client, and says nothing about the
    // model's health.
    gw.set_scenario(json!({"models": {UP_CHEAP: {"sequence": [status(400)]}}})).await;
    wait_half_open(&gw, "cheap").await;
    let r = gw.chat(&req("auto", PROMPT)).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(attempt_summary(&gw.record_of(&r.headers).await), ["cheap:error:http_400"]);

    // The probe is over; the model is healthy. Within a few cool-downs it must be probed again
    // and used, not skipped forever as "a probe request is in flight".
    let t0 = Instant::now();
    loop {
        let r = gw.chat(&req("auto", PROMPT)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        if r.model().as_deref() == Some("cheap") {
            break;
        }
        let rec = gw.record_of(&r.headers).await;
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "cheap still skipped {:?} after its probe ended: {}",
            t0.elapsed(),
            rec["attempts"][0]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.circuit("cheap").await, "closed");
}

#[tokio::test]
async fn circuit_breaker_probe_abandoned_by_its_client_does_not_wedge_the_breaker() {
    let gw = Gateway::start_with(breaker_opts()).await;
    open_cheap_breaker(&gw).await;

    // The probe's upstream is slow and its client gives up first.
    gw.set_scenario(json!({"models": {UP_CHEAP: {"latency_ms": 3000}}})).await;
    wait_half_open(&gw, "cheap").await;
    let abandoned = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&req("auto", PROMPT))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(abandoned.is_err(), "the client was meant to time out");
    // Let the router notice the closed connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.set_scenario(json!({"seed": 1})).await;

    let t0 = Instant::now();
    loop {
        let r = gw.chat(&req("auto", PROMPT)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        if r.model().as_deref() == Some("cheap") {
            break;
        }
        let rec = gw.record_of(&r.headers).await;
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "cheap still skipped {:?} after its probe was abandoned: {}",
            t0.elapsed(),
            rec["attempts"][0]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.circuit("cheap").await, "closed");

    // The abandoned request still left its one record.
    let gone = gw.get("/v1/decisions?outcome=client_disconnected").await;
    let gone = gone.body["data"].as_array().expect("data").clone();
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(gone[0]["http_status"], 499);
}

// ---------------------------------------------------------------------------------------------
// 5. Policy skips.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn policy_skips_are_recorded_and_all_skipped_is_a_client_error() {
    let gw = Gateway::start().await;

    // Context window: ~2,500 prompt tokens > cheap's 2,000.
    let long = format!("{} {}", PROMPT, "word ".repeat(2_000));
    let r = gw.chat(&req("auto", &long)).await;
    assert_openai_completion(&r, "mid");
    let rec = gw.record_of(&r.headers).await;
    assert!(skipped(&rec, "cheap").is_some_and(|s| s.starts_with("context window")), "{rec}");
    assert_eq!(skipped(&rec, "mid"), None);
    assert_eq!(chain(&rec), ["mid", "top"]);
    assert_eq!(attempt_summary(&rec), ["mid:ok"]);
    assert_eq!(rec["outcome"], "success");

    // Missing capability: tools (cheap has none).
    let mut body = req("auto", PROMPT);
    body["tools"] = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]);
    let r = gw.chat(&body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.model().as_deref(), Some("mid"));
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(skipped(&rec, "cheap").as_deref(), Some("missing capability 'tools'"));
    assert_eq!(chain(&rec), ["mid", "top"]);

    // The same, naming the model: the named model is skipped by policy, its fallbacks serve.
    body["model"] = json!("cheap");
    let r = gw.chat(&body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.model().as_deref(), Some("mid"));
    let rec = gw.record_of(&r.headers).await;
    assert!(rec["reason"].as_str().unwrap().contains("skipped by policy"), "{rec}");
    assert_eq!(chain(&rec), ["mid", "top"]);

    // Missing capability: json (mid has none).
    let mut body = req("auto", PROMPT);
    body["response_format"] = json!({"type": "json_object"});
    let r = gw.chat(&body).await;
    assert_openai_completion(&r, "cheap");
    serde_json::from_str::<Value>(&r.content()).expect("JSON content");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(skipped(&rec, "mid").as_deref(), Some("missing capability 'json'"));
    assert_eq!(chain(&rec), ["cheap", "top"]);

    // Missing capability: vision (only top).
    let body = json!({"model": "auto", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    ]}]});
    let r = gw.chat(&body).await;
    assert_openai_completion(&r, "top");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(skipped(&rec, "cheap").as_deref(), Some("missing capability 'vision'"));
    assert_eq!(skipped(&rec, "mid").as_deref(), Some("missing capability 'vision'"));
    assert_eq!(chain(&rec), ["top"]);

    // Allow-list.
    let mut body = req("auto", PROMPT);
    body["ladder"] = json!({"models": ["top"]});
    let r = gw.chat(&body).await;
    assert_openai_completion(&r, "top");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(skipped(&rec, "cheap").as_deref(), Some("not in the request's allow-list"));
    assert_eq!(skipped(&rec, "mid").as_deref(), Some("not in the request's allow-list"));
    assert_eq!(chain(&rec), ["top"]);
    assert_eq!(rec["hints"]["models"], json!(["top"]));

    // Cost cap: a math prompt starts at mid; top's expected cost (~$0.009) is over the cap.
    let mut body = req("auto", PROMPT);
    body["ladder"] = json!({"task": "math", "max_cost_usd": 0.005});
    let r = gw.chat(&body).await;
    assert_openai_completion(&r, "mid");
    let rec = gw.record_of(&r.headers).await;
    assert!(skipped(&rec, "top").is_some_and(|s| s.contains("exceeds max_cost_usd")), "{rec}");
    assert_eq!(skipped(&rec, "mid"), None);
    assert_eq!(chain(&rec), ["mid"]);
    assert_eq!(rec["task"], "math");
    assert_eq!(rec["hints"]["max_cost_usd"], 0.005);

    let upstream_before = gw.fake_stats().await["total"].as_u64().unwrap();

    // Everything over its context window: 400 context_length_exceeded, logged as rejected.
    let huge = "word ".repeat(28_000);
    let r = gw.chat(&req("auto", &huge)).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let (kind, code, message) = r.api_error();
    assert_eq!((kind.as_str(), code.as_str()), ("invalid_request_error", "context_length_exceeded"));
    assert_eq!(r.body["error"]["param"], "messages");
    assert!(message.contains("context window"), "{message}");
    assert_eq!(r.attempts(), 0);
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(rec["outcome"], "rejected");
    assert_eq!(rec["http_status"], 400);
    assert!(rec["error"].as_str().unwrap().contains("context window"), "{rec}");
    assert_eq!(rec["attempts"], json!([]));

    // Nothing eligible for another reason: 400 no_eligible_model.
    let mut body = req("auto", PROMPT);
    body["ladder"] = json!({"models": ["cheap"]});
    body["tools"] = json!([{"type": "function", "function": {"name": "lookup"}}]);
    let r = gw.chat(&body).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let (kind, code, message) = r.api_error();
    assert_eq!((kind.as_str(), code.as_str()), ("invalid_request_error", "no_eligible_model"));
    assert!(
        message.contains("missing capability 'tools'") && message.contains("allow-list"),
        "{message}"
    );
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(rec["outcome"], "rejected");
    assert_eq!(rec["http_status"], 400);

    assert_eq!(
        gw.fake_stats().await["total"].as_u64().unwrap(),
        upstream_before,
        "rejected requests reached an upstream"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Response checks.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn failed_response_checks_escalate() {
    let gw = Gateway::start().await;
    let bad = |style: &str| always(UP_CHEAP, json!({"kind": "bad", "style": style}));

    for (style, check) in [("empty", "empty_content"), ("truncated", "truncated"), ("refusal", "refusal")] {
        gw.set_scenario(bad(style)).await;
        let r = gw.chat(&req("auto", PROMPT)).await;
        assert_openai_completion(&r, "mid");
        assert_eq!(r.attempts(), 2);
        let rec = gw.record_of(&r.headers).await;
        assert_eq!(
            attempt_summary(&rec),
            [format!("cheap:check_failed:{check}"), "mid:ok".to_string()],
            "{style}"
        );
        assert_eq!(rec["outcome"], "escalated");
        assert_eq!(rec["final_model"], "mid");
        assert!(rec["attempts"][0]["reason"].as_str().is_some_and(|s| !s.is_empty()));
        // The failed attempt was paid for.
        assert!(rec["attempts"][0]["cost_usd"].as_f64().unwrap() > 0.0, "{rec}");
    }

    // Invalid JSON under response_format json_object (mid lacks json: cheap -> top).
    gw.set_scenario(bad("refusal")).await;
    let mut body = req("auto", PROMPT);
    body["response_format"] = json!({"type": "json_object"});
    let r = gw.chat(&body).await;
    assert_openai_completion(&r, "top");
    serde_json::from_str::<Value>(&r.content()).expect("the served answer is JSON");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(attempt_summary(&rec), ["cheap:check_failed:invalid_json", "top:ok"]);
    assert_eq!(rec["outcome"], "escalated");

    // The caller set max_tokens: finish_reason "length" is what they asked for.
    gw.set_scenario(bad("truncated")).await;
    let mut body = req("auto", PROMPT);
    body["max_tokens"] = json!(50);
    let r = gw.chat(&body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.model().as_deref(), Some("cheap"));
    assert_eq!(r.body["choices"][0]["finish_reason"], "length");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(attempt_summary(&rec), ["cheap:ok"]);
    assert_eq!(rec["outcome"], "success");

    // Every rung fails its checks: the last answer is served, marked degraded.
    gw.set_scenario(json!({"models": {
        UP_CHEAP: {"fail_rate": 1.0, "fail_with": {"kind": "bad", "style": "empty"}},
        UP_MID: {"fail_rate": 1.0, "fail_with": {"kind": "bad", "style": "refusal"}},
        UP_TOP: {"fail_rate": 1.0, "fail_with": {"kind": "bad", "style": "refusal"}},
    }}))
    .await;
    let r = gw.chat(&req("auto", PROMPT)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.model().as_deref(), Some("top"));
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(
        attempt_summary(&rec),
        [
            "cheap:check_failed:empty_content",
            "mid:check_failed:refusal",
            "top:check_failed:refusal"
        ]
    );
    assert_eq!(rec["outcome"], "degraded");
    assert_eq!(rec["final_model"], "top");
    assert!(rec["error"].as_str().is_some_and(|e| e.contains("refusal")), "{rec}");
}

// ---------------------------------------------------------------------------------------------
// 7. Streaming failures.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn stream_failure_before_first_byte_falls_back() {
    let gw = Gateway::start_with(Opts {
        first_byte_ms: 600,
        ..Opts::default()
    })
    .await;
    for (behavior, kinds) in [
        (status(503), vec!["cheap:error:http_503", "cheap:error:http_503"]),
        (
            json!({"kind": "slow_first_byte", "delay_ms": 2000}),
            vec!["cheap:error:timeout_first_byte"],
        ),
        (json!({"kind": "drop_stream", "after_chunks": 0}), vec!["cheap:error:stream_error"]),
    ] {
        gw.set_scenario(always(UP_CHEAP, behavior.clone())).await;
        let mut body = req("auto", PROMPT);
        body["stream_options"] = json!({"include_usage": true});
        let s = gw.stream(&body).await;
        assert_stream_shape(&s, "mid", true);
        let rec = gw.record_of(&s.headers).await;
        let mut expect: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
        expect.push("mid:ok".into());
        assert_eq!(attempt_summary(&rec), expect, "{behavior}");
        assert_eq!(rec["outcome"], "escalated");
        assert_eq!(rec["final_model"], "mid");
    }
}

#[tokio::test]
async fn stream_dropped_after_output_ends_with_an_error_event() {
    let gw = Gateway::start().await;

    // OpenAI-kind upstream.
    gw.set_scenario(always(UP_CHEAP, json!({"kind": "drop_stream", "after_chunks": 2})))
        .await;
    let s = gw.stream(&req("auto", PROMPT)).await;
    assert_stream_error_end(&s, "cheap");
    let rec = gw.record_of(&s.headers).await;
    assert_eq!(rec["outcome"], "stream_failed");
    assert_eq!(rec["http_status"], 200);
    assert_eq!(rec["final_model"], "cheap");
    assert_eq!(attempt_summary(&rec), ["cheap:error:stream_error"]);
    assert!(rec["error"].as_str().is_some_and(|e| !e.is_empty()), "{rec}");
    assert_eq!(gw.upstream_requests(UP_MID).await, 0, "no fallback once output started");

    // Anthropic-kind upstream.
    gw.set_scenario(always(UP_MID, json!({"kind": "drop_stream", "after_chunks": 2})))
        .await;
    let s = gw.stream(&req("mid", PROMPT)).await;
    assert_stream_error_end(&s, "mid");
    let rec = gw.record_of(&s.headers).await;
    assert_eq!(rec["outcome"], "stream_failed");
    assert_eq!(attempt_summary(&rec), ["mid:error:stream_error"]);
    assert_eq!(gw.upstream_requests(UP_TOP).await, 0);
}

// ---------------------------------------------------------------------------------------------
// 8. Graceful shutdown.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_logs_each_once() {
    let mut gw = Gateway::start_with(Opts {
        scenario: format!("[models.{UP_CHEAP}]\nlatency_ms = 1500\n"),
        ..Opts::default()
    })
    .await;
    const N: usize = 10;
    let mut tasks = Vec::new();
    for i in 0..N {
        let http = gw.http.clone();
        let url = format!("{}/v1/chat/completions", gw.url);
        // Every fifth request streams.
        let stream = i % 5 == 4;
        tasks.push(tokio::spawn(async move {
            let mut body = req("auto", &format!("{PROMPT} #{i}"));
            if stream {
                body["stream"] = json!(true);
            }
            let r = http.post(url).json(&body).send().await.expect("request");
            let status = r.status().as_u16();
            let id = header(r.headers(), "x-ladder-decision-id");
            let text = r.text().await.expect("the whole body");
            (stream, status, id, text)
        }));
    }
    // Wait until all of them are at the upstream.
    let t0 = Instant::now();
    loop {
        let s = gw.fake_stats().await;
        if s["models"][UP_CHEAP]["in_flight"].as_u64() == Some(N as u64) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "requests never all in flight: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.ladder.sigterm();

    let mut ids = Vec::new();
    for t in tasks {
        let (stream, status, id, text) = t.await.expect("task");
        assert_eq!(status, 200, "{text}");
        if stream {
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        } else {
            let body: Value = serde_json::from_str(&text).expect("JSON body");
            assert!(
                body["choices"][0]["message"]["content"].as_str().is_some_and(|c| !c.is_empty()),
                "{text}"
            );
        }
        ids.push(id.expect("decision id"));
    }
    let exit = gw
        .ladder
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("ladder did not exit after SIGTERM");
    assert!(exit.success(), "ladder exited with {exit}");

    let conn = rusqlite::Connection::open(&gw.db_path).expect("open the decision log");
    let count: i64 = conn.query_row("SELECT COUNT(*) FROM decisions", [], |r| r.get(0)).unwrap();
    assert_eq!(count, N as i64);
    for id in &ids {
        let (n, outcome): (i64, String) = conn
            .query_row("SELECT COUNT(*), MAX(outcome) FROM decisions WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(n, 1, "record {id}");
        assert_eq!(outcome, "success");
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Errors in OpenAI's shape.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn errors_use_the_openai_shape() {
    let gw = Gateway::start_with(Opts {
        max_body_bytes: 16 * 1024,
        ..Opts::default()
    })
    .await;

    let r = gw
        .post_raw(
            "/v1/chat/completions",
            b"{\"model\": \"auto\", \"messages\": [".to_vec(),
            "application/json",
        )
        .await;
    assert_eq!(r.status, 400);
    let (kind, code, message) = r.api_error();
    assert_eq!((kind.as_str(), code.as_str()), ("invalid_request_error", "invalid_request_body"));
    assert!(message.contains("not valid JSON"), "{message}");

    let r = gw.chat(&req("gpt-9", PROMPT)).await;
    assert_eq!(r.status, 404);
    let (kind, code, message) = r.api_error();
    assert_eq!((kind.as_str(), code.as_str()), ("invalid_request_error", "model_not_found"));
    assert!(message.contains("gpt-9"), "{message}");
    assert_eq!(r.body["error"]["param"], "model");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(rec["outcome"], "rejected");
    assert_eq!(rec["http_status"], 404);

    let r = gw.chat_with(&req("auto", PROMPT), &[("x-ladder-task", "poetry")]).await;
    assert_eq!(r.status, 400);
    let (_, code, message) = r.api_error();
    assert_eq!(code, "invalid_task");
    assert!(
        message.contains("poetry") && message.contains("creative_writing") && message.contains("translation"),
        "{message}"
    );
    assert_eq!(r.body["error"]["param"], "x-ladder-task");

    let mut body = req("auto", PROMPT);
    body["ladder"] = json!({"task": "poetry"});
    let r = gw.chat(&body).await;
    assert_eq!(r.status, 400);
    let (_, code, message) = r.api_error();
    assert_eq!(code, "invalid_task");
    assert!(
        message.contains("valid tasks are") && message.contains("code") && message.contains("math"),
        "{message}"
    );
    assert_eq!(r.body["error"]["param"], "ladder.task");

    // A valid task hint is used.
    let r = gw.chat_with(&req("auto", PROMPT), &[("x-ladder-task", "math")]).await;
    assert_openai_completion(&r, "mid");
    assert_eq!(gw.record_of(&r.headers).await["task"], "math");

    let big = req("auto", &"x".repeat(20 * 1024));
    let r = gw.chat(&big).await;
    assert_eq!(r.status, 413, "{}", r.text);
    let (kind, code, message) = r.api_error();
    assert_eq!((kind.as_str(), code.as_str()), ("invalid_request_error", "request_too_large"));
    assert!(message.contains("16384"), "{message}");

    let r = gw.get("/v1/nope").await;
    assert_eq!(r.status, 404);
    let (_, code, message) = r.api_error();
    assert_eq!(code, "not_found");
    assert!(message.contains("/v1/nope"), "{message}");

    let r = gw.get("/v1/chat/completions").await;
    assert_eq!(r.status, 405);
    let (kind, code, _) = r.api_error();
    assert_eq!((kind.as_str(), code.as_str()), ("invalid_request_error", "method_not_allowed"));

    let r = gw.get("/v1/decisions/dec_nope").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.api_error().1, "not_found");

    let r = gw.get("/v1/decisions?outcome=bogus").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.api_error().1, "invalid_value");

    assert_eq!(gw.fake_stats().await["total"], 1, "only the valid request reached an upstream");
}

// ---------------------------------------------------------------------------------------------
// 10. Decision log, /v1/route, /v1/models.
// ---------------------------------------------------------------------------------------------

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn decisions_list_filters_and_pages() {
    let gw = Gateway::start().await;
    let mut all = Vec::new(); // oldest first
    let chat_id = |r: &Reply| r.header("x-ladder-decision-id").expect("decision id");

    // Two chat successes on cheap, one math on mid.
    for i in 0..2 {
        let r = gw.chat(&req("auto", &format!("{PROMPT} {i}"))).await;
        assert_eq!(r.model().as_deref(), Some("cheap"));
        all.push(chat_id(&r));
    }
    let r = gw.chat_with(&req("auto", PROMPT), &[("x-ladder-task", "math")]).await;
    assert_eq!(r.model().as_deref(), Some("mid"));
    let math_id = chat_id(&r);
    all.push(math_id.clone());

    tokio::time::sleep(Duration::from_millis(30)).await;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    tokio::time::sleep(Duration::from_millis(30)).await;

    // One escalated (cheap 503 -> mid), one rejected.
    gw.set_scenario(always(UP_CHEAP, status(503))).await;
    let r = gw.chat(&req("auto", PROMPT)).await;
    assert_eq!(r.model().as_deref(), Some("mid"));
    let escalated_id = chat_id(&r);
    all.push(escalated_id.clone());
    let r = gw.chat(&req("gpt-9", PROMPT)).await;
    assert_eq!(r.status, 404);
    let rejected_id = chat_id(&r);
    all.push(rejected_id.clone());
    let newest_first: Vec<String> = all.iter().rev().cloned().collect();

    let page = gw.get("/v1/decisions").await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert_eq!(page.body["object"], "list");
    assert_eq!(ids(&page.body), newest_first);
    assert_eq!(page.body["has_more"], false);
    assert!(page.body["next_cursor"].is_null());

    let by_model = gw.get("/v1/decisions?model=mid").await;
    assert_eq!(ids(&by_model.body), [escalated_id.clone(), math_id.clone()]);
    let by_model = gw.get("/v1/decisions?model=cheap").await;
    assert_eq!(ids(&by_model.body), [all[1].clone(), all[0].clone()]);

    let by_outcome = gw.get("/v1/decisions?outcome=escalated").await;
    assert_eq!(ids(&by_outcome.body), [escalated_id.as_str()]);
    let by_outcome = gw.get("/v1/decisions?outcome=rejected").await;
    assert_eq!(ids(&by_outcome.body), [rejected_id.as_str()]);
    let by_outcome = gw.get("/v1/decisions?outcome=success").await;
    assert_eq!(ids(&by_outcome.body), [math_id.clone(), all[1].clone(), all[0].clone()]);

    let by_task = gw.get("/v1/decisions?task=math").await;
    assert_eq!(ids(&by_task.body), [math_id.as_str()]);
    let by_task = gw.get("/v1/decisions?task=chat&model=mid").await;
    assert_eq!(ids(&by_task.body), [escalated_id.as_str()]);

    let by_since = gw.get(&format!("/v1/decisions?since={since:.3}")).await;
    assert_eq!(ids(&by_since.body), [rejected_id.clone(), escalated_id.clone()]);
    let rfc3339 = gw.get("/v1/decisions?since=2999-01-01T00:00:00Z").await;
    assert_eq!(rfc3339.status, 200);
    assert!(ids(&rfc3339.body).is_empty());

    // Cursor paging, two at a time.
    let mut seen = Vec::new();
    let mut url = "/v1/decisions?limit=2".to_string();
    let mut pages = 0;
    loop {
        let p = gw.get(&url).await;
        assert_eq!(p.status, 200, "{}", p.text);
        let got = ids(&p.body);
        assert!(got.len() <= 2);
        seen.extend(got);
        pages += 1;
        match p.body["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(p.body["has_more"], true);
                url = format!("/v1/decisions?limit=2&cursor={c}");
            }
            None => {
                assert_eq!(p.body["has_more"], false);
                break;
            }
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, newest_first);

    // Paging combined with a filter.
    let p = gw.get("/v1/decisions?outcome=success&limit=2").await;
    assert_eq!(ids(&p.body), [math_id.clone(), all[1].clone()]);
    let c = p.body["next_cursor"].as_str().expect("a next page").to_string();
    let p = gw.get(&format!("/v1/decisions?outcome=success&limit=2&cursor={c}")).await;
    assert_eq!(ids(&p.body), [all[0].clone()]);
    assert_eq!(p.body["has_more"], false);

    for bad in ["limit=0", "limit=501", "cursor=abc", "task=poetry", "since=yesterday"] {
        let r = gw.get(&format!("/v1/decisions?{bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        r.api_error();
    }
}

#[tokio::test]
async fn route_decides_without_calling_upstream_and_models_lists_the_catalogue() {
    let gw = Gateway::start().await;
    let before = gw.fake_stats().await;

    let r = gw.post_json("/v1/route", &req("auto", PROMPT)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["model"], "cheap");
    assert_eq!(r.body["chain"], json!(["cheap", "mid", "top"]));
    assert_eq!(r.body["mode"], "auto");
    assert_eq!(r.body["task"], "chat");
    assert_eq!(r.body["candidates"].as_array().unwrap().len(), 3);
    assert!(r.body["reason"].as_str().is_some_and(|s| !s.is_empty()));

    let mut body = req("auto", PROMPT);
    body["ladder"] = json!({"task": "math"});
    let r = gw.post_json("/v1/route", &body).await;
    assert_eq!(r.body["model"], "mid");
    assert_eq!(r.body["chain"], json!(["mid", "top"]));
    assert_eq!(r.body["task_source"], "hint");

    let r = gw.post_json("/v1/route", &req("top", PROMPT)).await;
    assert_eq!(r.body["chain"], json!(["top"]));
    assert_eq!(r.body["mode"], "explicit");

    let r = gw.post_json("/v1/route", &req("gpt-9", PROMPT)).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.api_error().1, "model_not_found");

    assert_eq!(gw.fake_stats().await, before, "/v1/route called an upstream");
    let log = gw.get("/v1/decisions").await;
    assert_eq!(log.body["data"], json!([]), "/v1/route is not a chat request and is not logged");

    let r = gw.get("/v1/models").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["object"], "list");
    let data = r.body["data"].as_array().unwrap();
    let names: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(names, ["auto", "cheap", "mid", "top"]);
    for m in data {
        assert_eq!(m["object"], "model");
    }
    let mid = &data[2];
    assert_eq!(mid["owned_by"], "fake-anthropic");
    assert_eq!(mid["ladder"]["upstream"], UP_MID);
    assert_eq!(mid["ladder"]["context_window"], 8000);
    assert_eq!(mid["ladder"]["capabilities"], json!(["tools"]));
    assert_eq!(mid["ladder"]["input_price_per_mtok"], 1.0);
    assert_eq!(mid["ladder"]["circuit"], "closed");

    let h = gw.get("/healthz").await;
    assert_eq!(h.body["status"], "ok");
    assert_eq!(h.body["models"], 3);
    assert_eq!(h.body["classifier"]["enabled"], false);
}

// ---------------------------------------------------------------------------------------------
// More: the chain deadline, explicit fallbacks, tool calls, streamed checks, idle streams,
// clients leaving, hint precedence.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_chain_deadline_bounds_the_whole_request() {
    let gw = Gateway::start_with(Opts {
        attempt_ms: 600,
        total_ms: 1_000,
        ..Opts::default()
    })
    .await;
    gw.set_scenario(json!({"models": {
        UP_CHEAP: {"fail_rate": 1.0, "fail_with": {"kind": "hang"}},
        UP_MID: {"fail_rate": 1.0, "fail_with": {"kind": "hang"}},
    }}))
    .await;
    let r = gw.chat(&req("auto", PROMPT)).await;
    assert_eq!(r.status, 504, "{}", r.text);
    let (kind, code, _) = r.api_error();
    assert_eq!((kind.as_str(), code.as_str()), ("timeout_error", "deadline_exceeded"));
    assert!(r.elapsed < Duration::from_millis(2_000), "took {:?}", r.elapsed);
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(
        attempt_summary(&rec),
        ["cheap:error:timeout_attempt", "mid:error:timeout_deadline", "top:skipped:deadline"]
    );
    assert_eq!(rec["outcome"], "failed");
    assert_eq!(rec["http_status"], 504);
    assert_eq!(gw.upstream_requests(UP_TOP).await, 0, "no attempt after the deadline");
}

#[tokio::test]
async fn explicit_fallbacks_replace_the_quality_ladder() {
    let mut opts = Opts::default();
    opts.model_mut("cheap").fallbacks = Some(vec!["top"]);
    let gw = Gateway::start_with(opts).await;
    gw.set_scenario(always(UP_CHEAP, status(503))).await;

    let r = gw.chat(&req("cheap", PROMPT)).await;
    assert_openai_completion(&r, "top");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(chain(&rec), ["cheap", "top"]);
    assert_eq!(attempt_summary(&rec), ["cheap:error:http_503", "cheap:error:http_503", "top:ok"]);
    assert_eq!(rec["outcome"], "escalated");
    assert_eq!(gw.upstream_requests(UP_MID).await, 0);

    // `auto` still climbs the quality ladder.
    let r = gw.chat(&req("auto", PROMPT)).await;
    assert_openai_completion(&r, "mid");
}

#[tokio::test]
async fn tool_calls_pass_through_both_provider_kinds() {
    let gw = Gateway::start().await;
    for model in ["mid", "top"] {
        let mut body = req(model, "Look up the weather in Paris. [fake:call_tool]");
        body["tools"] = json!([{"type": "function", "function": {
            "name": "lookup",
            "description": "Look something up",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
        }}]);

        let r = gw.chat(&body).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.model().as_deref(), Some(model));
        let msg = &r.body["choices"][0]["message"];
        let call = &msg["tool_calls"][0];
        assert_eq!(call["type"], "function", "{model}: {}", r.text);
        assert_eq!(call["function"]["name"], "lookup");
        assert!(call["id"].as_str().is_some_and(|s| !s.is_empty()));
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).expect("arguments are JSON");
        assert!(args["q"].is_string(), "{args}");
        assert_eq!(r.body["choices"][0]["finish_reason"], "tool_calls");
        let rec = gw.record_of(&r.headers).await;
        assert_eq!(attempt_summary(&rec), [format!("{model}:ok")], "a tool call is not empty content");
        assert_eq!(rec["outcome"], "success");

        let s = gw.stream(&body).await;
        assert_eq!(s.status, 200, "{}", s.raw);
        assert!(s.done(), "{}", s.raw);
        let mut name = String::new();
        let mut arguments = String::new();
        for c in s.chunks() {
            for tc in c["choices"][0]["delta"]["tool_calls"].as_array().cloned().unwrap_or_default() {
                name.push_str(tc["function"]["name"].as_str().unwrap_or(""));
                arguments.push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
            }
        }
        assert_eq!(name, "lookup", "{model}: {}", s.raw);
        assert_eq!(
            serde_json::from_str::<Value>(&arguments).expect("streamed arguments are JSON"),
            args
        );
        assert!(
            s.chunks().iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"),
            "{}",
            s.raw
        );
        assert_eq!(attempt_summary(&gw.record_of(&s.headers).await), [format!("{model}:ok")]);
    }
    assert_eq!(gw.fake_stats().await["rejected"], 0);
}

#[tokio::test]
async fn an_empty_stream_fails_its_check_and_escalates() {
    let gw = Gateway::start().await;
    gw.set_scenario(always(UP_CHEAP, json!({"kind": "bad", "style": "empty"}))).await;
    let s = gw.stream(&req("auto", PROMPT)).await;
    assert_stream_shape(&s, "mid", false);
    let rec = gw.record_of(&s.headers).await;
    assert_eq!(attempt_summary(&rec), ["cheap:check_failed:empty_content", "mid:ok"]);
    assert_eq!(rec["outcome"], "escalated");
}

#[tokio::test]
async fn a_stream_that_goes_silent_ends_with_an_error_event() {
    let gw = Gateway::start_with(Opts {
        idle_ms: 300,
        ..Opts::default()
    })
    .await;
    // The first content chunk comes after 800 ms (within first_byte_ms), the next 800 ms later:
    // past idle_ms.
    gw.set_scenario(json!({"models": {UP_CHEAP: {"chunk_delay_ms": 800}}})).await;
    let s = gw.stream(&req("auto", PROMPT)).await;
    assert_stream_error_end(&s, "cheap");
    assert!(s.elapsed < Duration::from_millis(2_500), "took {:?}", s.elapsed);
    let rec = gw.record_of(&s.headers).await;
    assert_eq!(rec["outcome"], "stream_failed");
    assert_eq!(attempt_summary(&rec), ["cheap:error:stream_error"]);
    assert!(
        rec["attempts"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no data from the upstream")),
        "{rec}"
    );
}

#[tokio::test]
async fn a_client_leaving_mid_stream_is_logged_and_the_upstream_released() {
    use futures::StreamExt;
    let gw = Gateway::start().await;
    gw.set_scenario(json!({"models": {UP_CHEAP: {"chunk_delay_ms": 200, "output_tokens": 60}}}))
        .await;
    let mut body = req("auto", PROMPT);
    body["stream"] = json!(true);
    let resp = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&body)
        .send()
        .await
        .expect("stream request");
    assert_eq!(resp.status(), 200);
    let id = header(resp.headers(), "x-ladder-decision-id").expect("decision id");
    let mut bytes = resp.bytes_stream();
    let first = bytes.next().await.expect("a first chunk").expect("bytes");
    assert!(first.starts_with(b"data: "));
    drop(bytes);

    // Exactly one record, outcome client_disconnected, and the upstream stream is closed.
    let t0 = Instant::now();
    loop {
        let r = gw.get(&format!("/v1/decisions/{id}")).await;
        let in_flight = gw.fake_stats().await["models"][UP_CHEAP]["in_flight"].as_u64();
        if r.status == 200 && in_flight == Some(0) {
            assert_eq!(r.body["outcome"], "client_disconnected", "{}", r.text);
            assert_eq!(r.body["http_status"], 499);
            assert_eq!(r.body["final_model"], "cheap");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "record {} / upstream in flight {in_flight:?}",
            r.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = gw.get("/v1/decisions").await;
    assert_eq!(all.body["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_body_task_hint_wins_over_the_header() {
    let gw = Gateway::start().await;
    let mut body = req("auto", PROMPT);
    body["ladder"] = json!({"task": "math"});
    let r = gw.chat_with(&body, &[("x-ladder-task", "chat")]).await;
    assert_openai_completion(&r, "mid");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(rec["task"], "math");
    assert_eq!(rec["task_source"], "hint");
    assert_eq!(rec["hints"]["task"], "math");
    assert_eq!(chain(&rec), ["mid", "top"]);
}

/// Streamed chunks go out as soon as they are ready: the router's sockets disable Nagle's
/// algorithm. With it on, each small SSE write after the first waits for the client's delayed ACK
/// (40 ms on Linux), so a short streamed answer took ~45 ms longer than the same answer whole.
#[tokio::test]
async fn streamed_chunks_are_not_held_back_by_nagle() {
    let gw = Gateway::start_with(Opts {
        scenario: format!("seed = 1\n[models.\"{UP_CHEAP}\"]\noutput_tokens = 60\n"),
        ..Opts::default()
    })
    .await;
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (mut whole, mut streamed) = (Vec::new(), Vec::new());
    for i in 0..9 {
        let body = req("cheap", &format!("{PROMPT} {i}"));
        let r = gw.chat(&body).await;
        assert_eq!(r.status, 200);
        whole.push(r.elapsed);
        let s = gw.stream(&body).await;
        assert!(s.done() && s.chunks().len() > 20, "{}", s.raw);
        streamed.push(s.elapsed);
    }
    let (whole, streamed) = (median(whole), median(streamed));
    assert!(
        streamed < whole + Duration::from_millis(20),
        "median streamed answer {streamed:?} vs whole {whole:?}"
    );
}
