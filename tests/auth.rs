//! Virtual API keys, the admin key, budgets, rate limits and secrets, against real `ladder serve`
//! and `ladder fake-provider` processes (see `common`). Keys are made with the real CLI
//! (`ladder keys create`) while the server runs.

mod common;

use common::*;
use serde_json::{Value, json};
use sha2::Digest;
use std::time::{Duration, Instant};

const PROMPT: &str = "Say hello to the key tests.";

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn chat_as(gw: &Gateway, key: &str, body: &Value) -> Reply {
    gw.chat_with(body, &[("authorization", &bearer(key))]).await
}

async fn get_as(gw: &Gateway, key: Option<&str>, path: &str) -> Reply {
    let mut rb = bare_client().get(format!("{}{path}", gw.url));
    if let Some(k) = key {
        rb = rb.header("authorization", bearer(k));
    }
    let resp = rb.send().await.expect("GET");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
        text,
        elapsed: Duration::ZERO,
    }
}

async fn post_as(gw: &Gateway, key: Option<&str>, path: &str, body: &Value) -> Reply {
    let mut rb = bare_client().post(format!("{}{path}", gw.url)).json(body);
    if let Some(k) = key {
        rb = rb.header("authorization", bearer(k));
    }
    let resp = rb.send().await.expect("POST");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
        text,
        elapsed: Duration::ZERO,
    }
}

fn db(gw: &Gateway) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(&gw.db_path).expect("open the database");
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// (sum of total_cost_usd, record count) over the decision records of a key.
fn recorded_spend(gw: &Gateway, name: &str) -> (f64, i64) {
    db(gw)
        .query_row(
            "SELECT COALESCE(SUM(total_cost_usd), 0), COUNT(*) FROM decisions WHERE json_extract(record, '$.key_name') = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

fn key_spent(gw: &Gateway, name: &str) -> f64 {
    db(gw)
        .query_row("SELECT spent_usd FROM keys WHERE name = ?1", [name], |r| r.get(0))
        .unwrap()
}

fn assert_401(r: &Reply) {
    assert_eq!(r.status, 401, "{}", r.text);
    let (kind, code, _) = r.api_error();
    assert_eq!((kind.as_str(), code.as_str()), ("invalid_request_error", "invalid_api_key"));
}

#[tokio::test]
async fn keys_are_required_scoped_and_revocable() {
    let gw = Gateway::start_with(Opts {
        auth_refresh_ms: 200,
        ..Opts::default()
    })
    .await;

    // No key, a malformed header, a wrong key: 401 in OpenAI's shape, before the body is read.
    let r = post_as(&gw, None, "/v1/chat/completions", &req("auto", PROMPT)).await;
    assert_401(&r);
    assert!(r.api_error().2.contains("Bearer"), "{}", r.text);
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    let r = bare_client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .json(&req("auto", PROMPT))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let wrong = format!("lk-{}", "0".repeat(64));
    assert_401(&post_as(&gw, Some(&wrong), "/v1/chat/completions", &req("auto", PROMPT)).await);
    assert_401(&post_as(&gw, Some("sk-not-a-ladder-key"), "/v1/route", &req("auto", PROMPT)).await);
    assert_401(&get_as(&gw, None, "/v1/models").await);
    assert_401(&get_as(&gw, None, "/v1/decisions").await);
    // /healthz stays open.
    assert_eq!(get_as(&gw, None, "/healthz").await.status, 200);
    assert_eq!(gw.fake_stats().await["total"], 0, "nothing unauthenticated reached an upstream");

    // A key created by the CLI while the server runs works at once.
    let key = gw.create_key("app", &[]);
    assert!(
        key.len() == 67 && key.starts_with("lk-") && key[3..].chars().all(|c| c.is_ascii_hexdigit()),
        "{key}"
    );
    let r = chat_as(&gw, &key, &req("auto", PROMPT)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.header("x-ladder-decision-id").unwrap();
    assert_eq!(post_as(&gw, Some(&key), "/v1/route", &req("auto", PROMPT)).await.status, 200);
    assert_eq!(get_as(&gw, Some(&key), "/v1/models").await.status, 200);

    // The record names the key, never the key itself.
    let rec = gw.decision(&id).await;
    assert_eq!(rec["key_name"], "app");
    assert!(!rec.to_string().contains(&key));

    // Read endpoints need the admin key: a virtual key gets 403, the admin key 200.
    for path in [
        "/v1/decisions",
        &format!("/v1/decisions/{id}"),
        "/v1/decisions/stats",
        "/v1/admin/reload",
        "/v1/admin/anything",
    ] {
        let r = get_as(&gw, Some(&key), path).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text);
        assert_eq!(r.api_error().1, "admin_key_required");
    }
    for path in ["/v1/replay", "/v1/admin/reload"] {
        let r = post_as(&gw, Some(&key), path, &json!({"threshold": 0.5})).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text);
        assert_eq!(r.api_error().1, "admin_key_required");
    }
    assert_eq!(
        post_as(&gw, Some(ADMIN_KEY), "/v1/replay", &json!({"threshold": 0.5})).await.status,
        200
    );
    assert_eq!(get_as(&gw, Some(ADMIN_KEY), "/v1/decisions").await.status, 200);
    assert_eq!(get_as(&gw, Some(ADMIN_KEY), &format!("/v1/decisions/{id}")).await.status, 200);
    // The admin key works on the chat routes too, recorded as "admin".
    let r = chat_as(&gw, ADMIN_KEY, &req("auto", PROMPT)).await;
    assert_eq!(r.status, 200);
    assert_eq!(gw.record_of(&r.headers).await["key_name"], "admin");

    // Only the SHA-256 is stored.
    let (hash, prefix): (String, String) = db(&gw)
        .query_row("SELECT key_sha256, key_prefix FROM keys WHERE name = 'app'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(hash, hex::encode(sha2::Sha256::digest(key.as_bytes())));
    assert!(key.starts_with(&prefix) && prefix.len() < 12);
    let db_bytes = std::fs::read(&gw.db_path).unwrap();
    let wal = std::fs::read(gw.db_path.with_extension("db-wal")).unwrap_or_default();
    assert!(!contains(&db_bytes, key.as_bytes()) && !contains(&wal, key.as_bytes()));

    // list shows it (not the key); the CLI refuses duplicates, the reserved name, unknown models.
    let out = gw.keys_cli(&["list"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listing.contains("app") && listing.contains("active"),
        "{listing}"
    );
    assert!(!listing.contains(&key));
    let out = gw.keys_cli(&["list", "--json"]);
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["name"], "app");
    assert_eq!(rows[0]["requests"], 1, "{rows}");
    assert!(rows[0].get("key_sha256").is_none());
    for (args, needle) in [
        (vec!["create", "--name", "app"], "already exists"),
        (vec!["create", "--name", "admin"], "reserved"),
        (vec!["create", "--name", "x", "--models", "cheap,gpt-9"], "gpt-9"),
        (vec!["create", "--name", "bad name"], "--name"),
        (vec!["create", "--name", "y", "--budget-usd", "0"], "--budget-usd"),
        (vec!["revoke", "nobody"], "no active key"),
    ] {
        let out = gw.keys_cli(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{args:?}: {err}");
    }

    // Revocation takes effect within refresh_ms.
    let other = gw.create_key("other", &[]);
    let out = gw.keys_cli(&["revoke", "app"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t0 = Instant::now();
    loop {
        let r = chat_as(&gw, &key, &req("auto", PROMPT)).await;
        if r.status == 401 {
            assert!(r.api_error().2.contains("revoked"), "{}", r.text);
            break;
        }
        assert_eq!(r.status, 200);
        assert!(t0.elapsed() < Duration::from_secs(5), "revocation not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        chat_as(&gw, &other, &req("auto", PROMPT)).await.status,
        200,
        "other keys unaffected"
    );
    let out = gw.keys_cli(&["list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked"));
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_keys_models_are_intersected_with_the_request() {
    let gw = Gateway::start().await;
    let key = gw.create_key("limited", &["--models", "cheap,mid"]);

    let r = chat_as(&gw, &key, &req("auto", PROMPT)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(chain(&rec), ["cheap", "mid"]);
    assert_eq!(skipped(&rec, "top").as_deref(), Some("not in the request's allow-list"));

    // ladder.models narrows further; outside the key's list nothing is left.
    let mut body = req("auto", PROMPT);
    body["ladder"] = json!({"models": ["mid", "top"]});
    let r = chat_as(&gw, &key, &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(chain(&gw.record_of(&r.headers).await), ["mid"]);
    body["ladder"] = json!({"models": ["top"]});
    let r = chat_as(&gw, &key, &body).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.api_error().1, "no_eligible_model");
    let r = chat_as(&gw, &key, &req("top", PROMPT)).await;
    assert_eq!(r.status, 400, "{}", r.text);
    // /v1/route shows the same restriction.
    let r = post_as(&gw, Some(&key), "/v1/route", &req("auto", PROMPT)).await;
    assert_eq!(r.body["chain"], json!(["cheap", "mid"]), "{}", r.text);
    assert_eq!(gw.upstream_requests(UP_TOP).await, 0);
    // The admin key is not restricted.
    let r = chat_as(&gw, ADMIN_KEY, &req("top", PROMPT)).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn rpm_refuses_the_request_past_the_limit_with_retry_after() {
    let gw = Gateway::start().await;
    let key = gw.create_key("rpm3", &["--rpm", "3"]);
    let free = gw.create_key("free", &[]);
    for i in 0..3 {
        let r = chat_as(&gw, &key, &req("auto", PROMPT)).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text);
    }
    let r = chat_as(&gw, &key, &req("auto", PROMPT)).await;
    assert_eq!(r.status, 429, "{}", r.text);
    let (kind, code, message) = r.api_error();
    assert_eq!((kind.as_str(), code.as_str()), ("requests", "rate_limit_exceeded"));
    assert!(message.contains("3 requests per minute"), "{message}");
    let retry: u64 = r.header("retry-after").expect("retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let rec = gw.record_of(&r.headers).await;
    assert_eq!(rec["outcome"], "rejected");
    assert_eq!(rec["http_status"], 429);
    assert_eq!(rec["attempts"], json!([]));
    assert_eq!(gw.upstream_requests(UP_CHEAP).await, 3, "the refused request reached no upstream");
    // Streams count too; other keys and the admin are not limited by this key.
    let mut body = req("auto", PROMPT);
    body["stream"] = json!(true);
    assert_eq!(chat_as(&gw, &key, &body).await.status, 429);
    assert_eq!(chat_as(&gw, &free, &req("auto", PROMPT)).await.status, 200);
    assert_eq!(chat_as(&gw, ADMIN_KEY, &req("auto", PROMPT)).await.status, 200);
}

#[tokio::test]
async fn tpm_counts_estimated_then_actual_tokens() {
    let gw = Gateway::start().await;
    let key = gw.create_key("tpm", &["--tpm", "150"]);
    // A request that cannot fit at all (prompt + max_tokens over the limit): 429, no retry-after.
    let mut big = req("auto", PROMPT);
    big["max_tokens"] = json!(500);
    let r = chat_as(&gw, &key, &big).await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.api_error().0, "tokens");
    assert!(r.api_error().2.contains("too large"), "{}", r.text);
    assert!(r.header("retry-after").is_none());
    // Requests reserving ~64 tokens each: the window fills up within a few.
    let mut body = req("auto", PROMPT);
    body["max_tokens"] = json!(50);
    let mut ok = 0;
    let mut refused = None;
    for _ in 0..6 {
        let r = chat_as(&gw, &key, &body).await;
        match r.status {
            200 => ok += 1,
            429 => {
                refused = Some(r);
                break;
            }
            s => panic!("unexpected {s}: {}", r.text),
        }
    }
    let r = refused.expect("the tpm limit never triggered");
    assert!(
        ok >= 2,
        "settling with actual usage should leave room for more than one request ({ok})"
    );
    let (kind, code, _) = r.api_error();
    assert_eq!((kind.as_str(), code.as_str()), ("tokens", "rate_limit_exceeded"));
    assert!(r.header("retry-after").is_some());
}

/// Requests of `cheap` only, with a fixed output length so that a request's actual cost is
/// close to (and below) its reservation.
fn budget_body() -> Value {
    let mut b = req("auto", PROMPT);
    b["max_tokens"] = json!(24);
    b["ladder"] = json!({"models": ["cheap"]});
    b
}

#[tokio::test]
async fn budgets_hold_under_concurrency_and_survive_a_restart() {
    let mut gw = Gateway::start_with(Opts {
        scenario: format!("seed = 1\n[models.\"{UP_CHEAP}\"]\nlatency_ms = 300\noutput_tokens = 24\n"),
        ..Opts::default()
    })
    .await;
    // What one request reserves (its expected cost) and what it really costs.
    let route = post_as(&gw, Some(ADMIN_KEY), "/v1/route", &budget_body()).await;
    let reserve = route.body["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"] == "cheap")
        .unwrap()["expected_cost_usd"]
        .as_f64()
        .unwrap();
    let r = chat_as(&gw, ADMIN_KEY, &budget_body()).await;
    assert_eq!(r.status, 200);
    let one = gw.record_of(&r.headers).await["total_cost_usd"].as_f64().unwrap();
    assert!(one > 0.0 && one <= reserve, "actual {one} vs reserved {reserve}");

    let budget = reserve * 10.5;
    let key = gw.create_key("budgeted", &["--budget-usd", &format!("{budget:e}")]);

    // 40 at once: reservations cap how many run; the rest get insufficient_quota at once.
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let http = gw.http.clone();
            let url = format!("{}/v1/chat/completions", gw.url);
            let key = key.clone();
            tokio::spawn(async move {
                let r = http.post(url).bearer_auth(key).json(&budget_body()).send().await.unwrap();
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut ok = 0;
    let mut quota = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
                assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
                quota += 1;
            }
            s => panic!("unexpected {s}: {body}"),
        }
    }
    assert!(ok >= 1 && quota >= 1, "ok {ok}, refused {quota}");
    assert!(ok <= 10, "more requests ran at once than the budget covers: {ok}");
    let (spent, _) = recorded_spend(&gw, "budgeted");
    assert!(spent <= budget + one + 1e-12, "spent {spent} > budget {budget} + one request {one}");
    assert!((key_spent(&gw, "budgeted") - spent).abs() < 1e-12);

    // Use the rest of the budget one at a time until it is refused.
    let mut refused = false;
    for _ in 0..15 {
        let r = chat_as(&gw, &key, &budget_body()).await;
        if r.status == 429 {
            assert_eq!(r.api_error().1, "insufficient_quota");
            refused = true;
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text);
    }
    assert!(refused, "the budget never ran out");
    let (spent, n) = recorded_spend(&gw, "budgeted");
    assert!(spent <= budget + one + 1e-12, "spent {spent} > budget {budget} + one {one}");
    assert!(spent > budget - 2.0 * reserve, "the budget was not used: {spent} of {budget}");
    assert!((key_spent(&gw, "budgeted") - spent).abs() < 1e-12);
    let requests: i64 = db(&gw)
        .query_row("SELECT requests FROM keys WHERE name = 'budgeted'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(requests, n);

    // The spend survives a crash and restart: still refused.
    gw.restart_ladder().await;
    let r = chat_as(&gw, &key, &budget_body()).await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.api_error().1, "insufficient_quota");
    assert!((key_spent(&gw, "budgeted") - spent).abs() < 1e-12);
    // Other keys still work.
    let fresh = gw.create_key("fresh", &["--budget-usd", "1"]);
    assert_eq!(chat_as(&gw, &fresh, &budget_body()).await.status, 200);
}

#[tokio::test]
async fn auth_disabled_serves_without_keys() {
    let gw = Gateway::start_with(Opts {
        auth: false,
        ..Opts::default()
    })
    .await;
    let r = post_as(&gw, None, "/v1/chat/completions", &req("auto", PROMPT)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let id = r.header("x-ladder-decision-id").unwrap();
    let r = get_as(&gw, None, &format!("/v1/decisions/{id}")).await;
    assert_eq!(r.status, 200);
    assert!(r.body.get("key_name").is_none(), "{}", r.text);
}

/// The provider key never shows up in a response, a log line or the database, even when the
/// upstream echoes it back in its errors.
#[tokio::test]
async fn provider_keys_never_leak() {
    let secret = format!("sk-leaktest-{}", uuid::Uuid::new_v4().simple());
    let gw = Gateway::start_with(Opts {
        provider_key_env: Some("LADDER_TEST_UPSTREAM_KEY"),
        env: vec![("LADDER_TEST_UPSTREAM_KEY".into(), secret.clone())],
        scenario: format!("seed = 1\napi_key = \"{secret}\"\necho_api_key = true\n"),
        ..Opts::default()
    })
    .await;
    let vkey = gw.create_key("leak", &[]);
    let mut bodies: Vec<String> = Vec::new();
    let mut record_ids = Vec::new();
    let mut stream_body = req("auto", PROMPT);
    stream_body["stream"] = json!(true);

    // Success on both provider kinds: the fake checks the key it receives.
    for model in ["cheap", "mid", "top"] {
        for stream in [false, true] {
            let mut body = req(model, PROMPT);
            body["stream"] = json!(stream);
            let r = chat_as(&gw, &vkey, &body).await;
            assert_eq!(r.status, 200, "{model} stream={stream}: {}", r.text);
            bodies.push(format!("{:?}{}", r.headers, r.text));
            record_ids.push(r.header("x-ladder-decision-id").unwrap());
        }
    }
    assert_eq!(gw.fake_stats().await["rejected"], 0);

    // The fake now wants another key and echoes the one it got: every rung fails with 401.
    gw.set_scenario(json!({"seed": 1, "api_key": "sk-some-other-key", "echo_api_key": true}))
        .await;
    let direct = bare_client()
        .post(format!("{}/v1/chat/completions", gw.fake_url))
        .bearer_auth(&secret)
        .json(&json!({"model": UP_CHEAP, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(direct.contains(&secret), "the fake should echo the key it got: {direct}");
    for body in [req("auto", PROMPT), stream_body.clone(), req("mid", PROMPT)] {
        let r = chat_as(&gw, &vkey, &body).await;
        assert!(r.status >= 400, "{}", r.text);
        bodies.push(format!("{:?}{}", r.headers, r.text));
        record_ids.push(r.header("x-ladder-decision-id").unwrap());
    }
    // Upstream errors whose messages carry the key, then a rung that answers.
    gw.set_scenario(json!({"seed": 1, "api_key": secret, "models": {
        UP_CHEAP: {"fail_rate": 1.0, "fail_with": {"kind": "status", "status": 500, "message": format!("debug: key={secret}")}},
        UP_MID: {"fail_rate": 1.0, "fail_with": {"kind": "status", "status": 400, "message": format!("bad request for {secret}")}},
    }}))
    .await;
    for body in [req("auto", PROMPT), stream_body.clone(), req("mid", PROMPT)] {
        let r = chat_as(&gw, &vkey, &body).await;
        bodies.push(format!("{:?}{}", r.headers, r.text));
        record_ids.push(r.header("x-ladder-decision-id").unwrap());
    }
    // The decision API too.
    for id in &record_ids {
        bodies.push(gw.decision(id).await.to_string());
    }
    bodies.push(gw.get("/v1/decisions?limit=100").await.text);

    let redacted: usize = bodies.iter().filter(|b| b.contains("[redacted]")).count();
    assert!(redacted > 0, "the upstream echoes were never exercised");
    for b in &bodies {
        assert!(!b.contains(&secret), "the provider key leaked into a response: {b}");
        assert!(!b.contains(&vkey), "the virtual key leaked into a response: {b}");
    }
    // Logs (debug level) and every database file.
    let logs = gw.ladder.logs();
    assert!(!logs.contains(&secret), "the provider key leaked into the logs");
    assert!(
        !logs.contains(&vkey) && !logs.contains(ADMIN_KEY),
        "a client key leaked into the logs"
    );
    for ext in ["db", "db-wal", "db-shm"] {
        let bytes = std::fs::read(gw.db_path.with_extension(ext)).unwrap_or_default();
        assert!(!contains(&bytes, secret.as_bytes()), "the provider key is in decisions.{ext}");
        assert!(!contains(&bytes, vkey.as_bytes()), "the virtual key is in decisions.{ext}");
    }
}
