//! Durability: `kill -9` of `ladder serve` under load, then a restart on the same database. Every
//! request that got a complete 200 before the kill must have its decision record, the database
//! must pass SQLite's integrity check, and each key's persisted spend must equal the sum of its
//! records (they commit in one transaction).

mod common;

use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TARGET: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_answered_request() {
    let mut gw = Gateway::start_with(Opts {
        scenario: format!("seed = 1\n[models.\"{UP_CHEAP}\"]\nlatency_ms = 5\n[models.\"{UP_MID}\"]\nlatency_ms = 5\nchunk_delay_ms = 1\n"),
        ..Opts::default()
    })
    .await;
    let key = gw.create_key("load", &["--budget-usd", "1000"]);
    let answered: Arc<Mutex<Vec<String>>> = Arc::default();
    let ok = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let url = gw.url.clone();

    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (answered, ok, stop, key, url) = (answered.clone(), ok.clone(), stop.clone(), key.clone(), url.clone());
            tokio::spawn(async move {
                let http = bare_client();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let stream = i.is_multiple_of(4);
                    let model = if w % 2 == 0 { "auto" } else { "mid" };
                    let body = json!({"model": model, "stream": stream,
                        "messages": [{"role": "user", "content": format!("worker {w} request {i}")}]});
                    let Ok(resp) = http
                        .post(format!("{url}/v1/chat/completions"))
                        .bearer_auth(&key)
                        .json(&body)
                        .send()
                        .await
                    else {
                        break;
                    };
                    let status = resp.status().as_u16();
                    let id = header(resp.headers(), "x-ladder-decision-id");
                    let Ok(text) = resp.text().await else { break };
                    // A stream counts as answered only once it ended with [DONE] (sent after its
                    // record is committed).
                    if status == 200 && (!stream || text.trim_end().ends_with("data: [DONE]")) {
                        answered.lock().unwrap().push(id.expect("decision id"));
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else if status != 200 {
                        panic!("unexpected {status}: {text}");
                    }
                }
            })
        })
        .collect();

    let t0 = Instant::now();
    while ok.load(Ordering::Relaxed) < TARGET {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "load too slow: {} answered",
            ok.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Kill while the workers are still sending.
    gw.kill9_ladder().await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() >= TARGET);

    // Restart on the same database.
    gw.restart_ladder().await;
    assert_eq!(gw.get("/healthz").await.status, 200);
    let conn = rusqlite::Connection::open(&gw.db_path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(integrity, "ok");
    let mut stmt = conn.prepare("SELECT id FROM decisions").unwrap();
    let ids: HashSet<String> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    let missing: Vec<&String> = answered.iter().filter(|id| !ids.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered requests have no record: {:?}",
        missing.len(),
        answered.len(),
        &missing[..missing.len().min(5)]
    );
    // Through the API as well, for a sample.
    for id in answered.iter().step_by(50) {
        let rec = gw.decision(id).await;
        assert_eq!(rec["http_status"], 200);
        assert_eq!(rec["key_name"], "load");
    }
    // The key's spend is exactly the sum of its committed records.
    let (sum, n): (f64, i64) = conn
        .query_row(
            "SELECT COALESCE(SUM(total_cost_usd), 0), COUNT(*) FROM decisions WHERE json_extract(record, '$.key_name') = 'load'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let (spent, requests): (f64, i64) = conn
        .query_row("SELECT spent_usd, requests FROM keys WHERE name = 'load'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert!((spent - sum).abs() < 1e-9, "keys.spent_usd {spent} != records {sum}");
    assert_eq!(requests, n);
    assert!(n as usize >= answered.len());

    // And the restarted server serves.
    let r = gw
        .chat_with(&req("auto", "after the crash"), &[("authorization", &format!("Bearer {key}"))])
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}
