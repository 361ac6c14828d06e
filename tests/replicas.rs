//! Two `ladder serve` processes (replicas) sharing one Postgres decision log, on a real throwaway
//! cluster (see `common::pg`; skipped with a `SKIPPED:` line when the server binaries are
//! missing, unless `LADDER_REQUIRE_POSTGRES=1`): every record is visible from both replicas with
//! the same cursors, a virtual key's spend and budget hold across both, and SIGTERM of one loses
//! no record.

mod common;

use common::pg::{PASSWORD_ENV, PG_PASSWORD, PgCluster};
use common::*;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const PROMPT: &str = "Say hello to both replicas.";

/// Replica A (the gateway's router) and replica B (a second `ladder serve` on the same config).
struct Replicas {
    gw: Gateway,
    b: Proc,
    b_url: String,
}

impl Replicas {
    async fn start(pg: &PgCluster, db: &str, scenario: String) -> Replicas {
        pg.create_db(db);
        let gw = Gateway::start_with(Opts {
            scenario,
            store_url: Some(pg.url(db)),
            env: vec![(PASSWORD_ENV.to_string(), PG_PASSWORD.to_string())],
            auth_refresh_ms: 200,
            ..Opts::default()
        })
        .await;
        let config = gw.config_path.display().to_string();
        let (b, port) = start_on_free_port(&gw.http, &gw.dir, "ladder-b", &gw.env, |port| {
            vec![
                "serve".into(),
                "--config".into(),
                config.clone(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
            ]
        })
        .await;
        Replicas {
            gw,
            b,
            b_url: format!("http://127.0.0.1:{port}"),
        }
    }

    fn url(&self, replica: usize) -> &str {
        if replica == 0 { &self.gw.url } else { &self.b_url }
    }

    async fn chat(&self, replica: usize, key: &str, body: &Value) -> (u16, Option<String>, Value) {
        let r = self
            .gw
            .http
            .post(format!("{}/v1/chat/completions", self.url(replica)))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("chat request");
        let status = r.status().as_u16();
        let id = header(r.headers(), "x-ladder-decision-id");
        (status, id, r.json().await.unwrap_or(Value::Null))
    }

    /// An admin GET on one replica.
    async fn get(&self, replica: usize, path: &str) -> Value {
        let r = self.gw.http.get(format!("{}{path}", self.url(replica))).send().await.expect("GET");
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("JSON");
        assert_eq!(status, 200, "GET {path} on replica {replica}: {body}");
        body
    }

    /// The whole log through `/v1/decisions`, page by page (ids, newest first).
    async fn all_ids(&self, replica: usize, page: usize) -> Vec<String> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/decisions?limit={page}&cursor={c}"),
                None => format!("/v1/decisions?limit={page}"),
            };
            let body = self.get(replica, &path).await;
            ids.extend(
                body["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["id"].as_str().unwrap().to_string()),
            );
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return ids,
            }
        }
    }

    /// (spent_usd, requests) of a key from `ladder keys list --json` (the CLI on Postgres).
    fn key_row(&self, name: &str) -> (f64, i64) {
        let out = self.gw.keys_cli(&["list", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .expect("key row")
            .clone();
        (row["spent_usd"].as_f64().unwrap(), row["requests"].as_i64().unwrap())
    }

    /// (sum of total_cost_usd, count) of a key's records, read through replica `replica`.
    async fn recorded(&self, replica: usize, name: &str) -> (f64, i64) {
        let body = self.get(replica, "/v1/decisions?limit=500").await;
        let recs: Vec<&Value> = body["data"].as_array().unwrap().iter().filter(|r| r["key_name"] == name).collect();
        (recs.iter().map(|r| r["total_cost_usd"].as_f64().unwrap()).sum(), recs.len() as i64)
    }
}

/// Requests of `cheap` only with a fixed output length (cost close to, and below, the reservation).
fn budget_body() -> Value {
    let mut b = req("auto", PROMPT);
    b["max_tokens"] = json!(24);
    b["ladder"] = json!({"models": ["cheap"]});
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_one_log_and_one_budget() {
    let Some(pg) = PgCluster::start() else { return };
    let r = Replicas::start(
        &pg,
        "shared",
        format!("seed = 1\n[models.\"{UP_CHEAP}\"]\nlatency_ms = 5\noutput_tokens = 24\n"),
    )
    .await;
    // A key made by the CLI works on both replicas.
    let key = r.gw.create_key("shared", &["--budget-usd", "1000"]);

    // 40 requests, half through each replica, 8 at a time.
    let mut answered: Vec<String> = Vec::new();
    for round in 0..5 {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let body = if i % 4 == 3 {
                    let mut b = req("auto", &format!("{PROMPT} {round}/{i}"));
                    b["stream"] = json!(true);
                    b
                } else {
                    req("auto", &format!("{PROMPT} {round}/{i}"))
                };
                let (http, url, key) = (r.gw.http.clone(), r.url(i % 2).to_string(), key.clone());
                tokio::spawn(async move {
                    let resp = http
                        .post(format!("{url}/v1/chat/completions"))
                        .bearer_auth(key)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    let status = resp.status().as_u16();
                    let id = header(resp.headers(), "x-ladder-decision-id");
                    let text = resp.text().await.unwrap();
                    assert_eq!(status, 200, "{text}");
                    id.expect("decision id")
                })
            })
            .collect();
        for t in tasks {
            answered.push(t.await.unwrap());
        }
    }
    assert_eq!(answered.len(), 40);

    // Every record is visible from both replicas, and paging gives the same sequence on both.
    let from_a = r.all_ids(0, 7).await;
    let from_b = r.all_ids(1, 7).await;
    assert_eq!(from_a, from_b, "the replicas page the log differently");
    assert_eq!(from_a.iter().collect::<HashSet<_>>().len(), 40, "each record once");
    let set: HashSet<&String> = from_a.iter().collect();
    for id in &answered {
        assert!(set.contains(id), "record {id} missing");
    }
    for (i, id) in answered.iter().enumerate().step_by(9) {
        let rec = r.get(1 - i % 2, &format!("/v1/decisions/{id}")).await;
        assert_eq!(rec["key_name"], "shared");
    }
    // Feedback through B on a record A wrote; stats from A count both replicas' records.
    let fb =
        r.gw.http
            .post(format!("{}/v1/feedback", r.b_url))
            .json(&json!({"decision_id": answered[0], "outcome": "success", "source": "eval"}))
            .send()
            .await
            .unwrap();
    assert_eq!(fb.status(), 200);
    let stats = r.get(0, "/v1/decisions/stats").await;
    assert_eq!(stats["total"]["requests"], 40, "{stats}");
    let replay =
        r.gw.http
            .post(format!("{}/v1/replay", r.gw.url))
            .json(&json!({"threshold": 0.9}))
            .send()
            .await
            .unwrap();
    assert_eq!(replay.status(), 200);

    // The key's spend is the sum of its records, committed by both replicas.
    let (spent, requests) = r.key_row("shared");
    let (sum, n) = r.recorded(0, "shared").await;
    assert_eq!((requests, n), (40, 40));
    assert!((spent - sum).abs() < 1e-9, "keys.spent_usd {spent} != records {sum}");

    // One budget across both replicas. What a request reserves, and what it costs:
    let route =
        r.gw.http
            .post(format!("{}/v1/route", r.gw.url))
            .json(&budget_body())
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
    let reserve = route["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"] == "cheap")
        .unwrap()["expected_cost_usd"]
        .as_f64()
        .unwrap();
    let budget = reserve * 10.5;
    let tight = r.gw.create_key("tight", &["--budget-usd", &format!("{budget:e}")]);
    // B knows the key (and its spend) from its first request.
    let (status, id, _) = r.chat(1, &tight, &budget_body()).await;
    assert_eq!(status, 200);
    let one = r.get(0, &format!("/v1/decisions/{}", id.unwrap())).await["total_cost_usd"]
        .as_f64()
        .unwrap();
    // Spend the rest through A until A refuses.
    let mut refused = false;
    for _ in 0..30 {
        let (status, _, body) = r.chat(0, &tight, &budget_body()).await;
        if status == 429 {
            assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
            refused = true;
            break;
        }
        assert_eq!(status, 200, "{body}");
    }
    assert!(refused, "A never ran out of budget");
    // B learns of A's spend within auth.refresh_ms (200 ms): at most the request that triggers
    // its refresh gets through, then B refuses too.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut passed_after = 0;
    let t0 = Instant::now();
    loop {
        let (status, _, body) = r.chat(1, &tight, &budget_body()).await;
        if status == 429 {
            assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        passed_after += 1;
        assert!(t0.elapsed() < Duration::from_secs(5), "B kept spending a budget A had used up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(passed_after <= 1, "B admitted {passed_after} requests after the budget ran out");
    let (spent, requests) = r.key_row("tight");
    let (sum, n) = r.recorded(1, "tight").await;
    assert_eq!(requests, n);
    assert!((spent - sum).abs() < 1e-9, "keys.spent_usd {spent} != records {sum}");
    assert!(
        spent <= budget + 2.0 * one + 1e-12,
        "spent {spent} over budget {budget} (one request {one})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_of_one_replica_loses_no_record() {
    let Some(pg) = PgCluster::start() else { return };
    let mut r = Replicas::start(&pg, "drain", format!("[models.\"{UP_CHEAP}\"]\nlatency_ms = 1500\n")).await;
    let key = r.gw.create_key("drain", &[]);
    const N: usize = 10;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let mut body = req("auto", &format!("{PROMPT} #{i}"));
            if i % 5 == 4 {
                body["stream"] = json!(true);
            }
            let (http, url, key) = (r.gw.http.clone(), r.b_url.clone(), key.clone());
            tokio::spawn(async move {
                let resp = http
                    .post(format!("{url}/v1/chat/completions"))
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await
                    .expect("request");
                let status = resp.status().as_u16();
                let id = header(resp.headers(), "x-ladder-decision-id");
                let text = resp.text().await.expect("the whole body");
                (status, id, text)
            })
        })
        .collect();
    // All at the upstream, then SIGTERM replica B.
    let t0 = Instant::now();
    while r.gw.fake_stats().await["models"][UP_CHEAP]["in_flight"].as_u64() != Some(N as u64) {
        assert!(t0.elapsed() < Duration::from_secs(10), "requests never all in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.b.sigterm();
    let mut ids = Vec::new();
    for t in tasks {
        let (status, id, text) = t.await.unwrap();
        assert_eq!(status, 200, "{text}");
        ids.push(id.expect("decision id"));
    }
    let exit =
        r.b.wait_exit(Duration::from_secs(15))
            .await
            .expect("replica B did not exit after SIGTERM");
    assert!(exit.success(), "replica B exited with {exit}\n{}", r.b.logs());

    // Replica A, still up, serves every record B committed, once each.
    let all = r.all_ids(0, 500).await;
    assert_eq!(all.len(), N, "{all:?}");
    for id in &ids {
        let rec = r.get(0, &format!("/v1/decisions/{id}")).await;
        assert_eq!(rec["outcome"], "success");
        assert_eq!(rec["key_name"], "drain");
    }
    let (_, requests) = r.key_row("drain");
    assert_eq!(requests, N as i64);
    // And A keeps serving on the same log.
    let (status, id, _) = r.chat(0, &key, &req("auto", PROMPT)).await;
    assert_eq!(status, 200);
    assert!(r.get(0, &format!("/v1/decisions/{}", id.unwrap())).await["id"].is_string());
}
