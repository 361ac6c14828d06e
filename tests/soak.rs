//! Soak: `ladder serve` under a steady request rate with upstream faults injected at a known
//! rate, for `LADDER_SOAK_SECS` seconds (default 20; `LADDER_SOAK_SECS=600` is the 10-minute run)
//! at `LADDER_SOAK_RPS` requests per second (default 80).
//!
//! Requests mix streaming and non-streaming, `auto` and named models, through a virtual key with
//! limits (so reservations and rate windows are exercised). `cheap` and `mid` fail 10% of their
//! requests with a mix of faults (500, 503, 429 with retry-after, reset, malformed JSON, wrong
//! content type, a stream cut before output, hang); `top` never fails and ends every chain, so
//! every request must end 200 with a well-formed answer. Circuit breakers open and close during
//! the run (threshold 3).
//!
//! Asserted: no client-visible error at all; exactly one decision record per request; the failed
//! attempts in the log are exactly the faults the fake injected (no error beyond the injected
//! ones, none hidden); the rate was held; and the router's memory and open files do not grow
//! after warm-up (RSS from `/proc/PID/status`, descriptors in `/proc/PID/fd`).

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEFAULT_SECS: u64 = 20;
const DEFAULT_RPS: f64 = 80.0;
const FAULT_RATE: f64 = 0.1;
const MAX_IN_FLIGHT: usize = 512;
const TOTAL_MS: u64 = 4_000;
/// RSS may grow this much after warm-up (allocator caches, SQLite's page cache filling up).
const RSS_GROWTH_LIMIT_KB: u64 = 30 * 1024;
/// Open descriptors may differ this much from warm-up (connections in flight and pooled).
const FD_SLACK: usize = 24;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn fault_mix() -> Value {
    json!([
        status(500),
        status(503),
        {"kind": "status", "status": 429, "retry_after_ms": 20},
        {"kind": "reset"},
        {"kind": "malformed_json"},
        {"kind": "wrong_content_type"},
        {"kind": "drop_stream", "after_chunks": 0},
        {"kind": "hang"},
    ])
}

/// RSS (kB) and open descriptors of a process.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/PID/fd").count();
    (rss, fds)
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Duration,
    rss_kb: u64,
    fds: usize,
    in_flight: usize,
}

/// One request of the mix; the decision id and latency, or what was wrong.
async fn one(gw: &Gateway, key: &str, i: u64) -> Result<(String, Duration), String> {
    let model = ["auto", "auto", "cheap", "mid"][(i % 4) as usize];
    let stream = i.is_multiple_of(3);
    let mut body = req(model, &format!("Soak request {i}: describe the weather in one sentence."));
    let auth = format!("Bearer {key}");
    let headers = [("authorization", auth.as_str())];
    let mut problems = Vec::new();
    let (id, elapsed) = if stream {
        let usage = i.is_multiple_of(2);
        if usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        let s = gw.stream_with(&body, &headers).await;
        let served = s.model().unwrap_or_default();
        check(&mut problems, "stream", || assert_stream_shape(&s, &served, usage));
        (s.header("x-ladder-decision-id"), s.elapsed)
    } else {
        let r = gw.chat_with(&body, &headers).await;
        let served = r.model().unwrap_or_default();
        check(&mut problems, "answer", || assert_openai_completion(&r, &served));
        (r.header("x-ladder-decision-id"), r.elapsed)
    };
    match id {
        Some(id) if problems.is_empty() => Ok((id, elapsed)),
        _ => Err(format!("request {i} ({model}, stream {stream}): {}", problems.join("; "))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steady_load_with_faults_no_errors_no_lost_records_no_growth() {
    let secs: u64 = env_or("LADDER_SOAK_SECS", DEFAULT_SECS);
    let rps: f64 = env_or("LADDER_SOAK_RPS", DEFAULT_RPS);
    let duration = Duration::from_secs(secs);
    let warm_up = Duration::from_secs(5).max(duration / 5);

    let gw = Arc::new(
        Gateway::start_with(Opts {
            attempt_ms: 1_000,
            first_byte_ms: 500,
            idle_ms: 1_000,
            total_ms: TOTAL_MS,
            connect_ms: 300,
            max_per_model: 1,
            max_retry_after_ms: 500,
            failure_threshold: 3,
            cooldown_ms: 500,
            ..Opts::default()
        })
        .await,
    );
    gw.set_scenario(json!({"seed": 7, "models": {
        UP_CHEAP: {"fail_rate": FAULT_RATE, "fail_mix": fault_mix()},
        UP_MID: {"fail_rate": FAULT_RATE, "fail_mix": fault_mix()},
    }}))
    .await;
    let key: Arc<str> = gw
        .create_key("soak", &["--budget-usd", "1000", "--rpm", "1000000", "--tpm", "1000000000"])
        .into();
    let pid = gw.ladder.pid();

    let sem = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rps));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut samples: Vec<Sample> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut latencies: Vec<Duration> = Vec::new();
    let mut collect = |res: Result<Result<(String, Duration), String>, tokio::task::JoinError>| match res {
        Ok(Ok((id, elapsed))) => {
            ids.push(id);
            latencies.push(elapsed);
        }
        Ok(Err(e)) => errors.push(e),
        Err(e) => errors.push(format!("request task failed: {e}")),
    };
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut next_sample = Duration::ZERO;
    while t0.elapsed() < duration {
        ticker.tick().await;
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let (gw, key, i) = (gw.clone(), key.clone(), sent);
        sent += 1;
        tasks.spawn(async move {
            let r = one(&gw, &key, i).await;
            drop(permit);
            r
        });
        while let Some(res) = tasks.try_join_next() {
            collect(res);
        }
        if t0.elapsed() >= next_sample {
            let (rss_kb, fds) = usage(pid);
            samples.push(Sample {
                at: t0.elapsed(),
                rss_kb,
                fds,
                in_flight: tasks.len(),
            });
            next_sample += Duration::from_secs(1);
        }
    }
    let load_time = t0.elapsed();
    let last_loaded = *samples.last().expect("samples");
    while let Some(res) = tasks.join_next().await {
        collect(res);
    }
    // Idle: the load is over and every response read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (end_rss, end_fds) = usage(pid);

    // Figures.
    let warm = *samples.iter().find(|s| s.at >= warm_up).expect("a sample after warm-up");
    let after_warm: Vec<&Sample> = samples.iter().filter(|s| s.at >= warm_up).collect();
    let max_rss = after_warm.iter().map(|s| s.rss_kb).max().unwrap_or(0);
    let max_fds = after_warm.iter().map(|s| s.fds).max().unwrap_or(0);
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
    };
    let stats = gw.fake_stats().await;
    let conn = rusqlite::Connection::open(&gw.db_path).expect("open the decision log");
    conn.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
    let outcomes: BTreeMap<String, i64> = conn
        .prepare("SELECT outcome, COUNT(*) FROM decisions GROUP BY outcome")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .map(Result::unwrap)
        .collect();
    // Attempts per (model, status) over the whole log.
    let attempts: BTreeMap<(String, String), u64> = conn
        .prepare(
            "SELECT json_extract(a.value, '$.model'), json_extract(a.value, '$.status'), COUNT(*) \
             FROM decisions, json_each(decisions.record, '$.attempts') AS a GROUP BY 1, 2",
        )
        .expect("prepare")
        .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get::<_, i64>(2)? as u64)))
        .expect("query")
        .map(Result::unwrap)
        .collect();
    let count = |model: &str, status: &str| attempts.get(&(model.to_string(), status.to_string())).copied().unwrap_or(0);
    let fake = |upstream: &str, field: &str| stats["models"][upstream][field].as_u64().unwrap_or(0);

    let mut timeline = String::new();
    for s in samples.iter().step_by((samples.len() / 10).max(1)) {
        timeline.push_str(&format!(
            "  t={:>4}s rss={:>6} kB fds={:>4} in_flight={}\n",
            s.at.as_secs(),
            s.rss_kb,
            s.fds,
            s.in_flight
        ));
    }
    eprintln!(
        "soak: {secs} s at {rps}/s target: {sent} requests in {:.1} s ({:.1}/s), {} errors\n\
         injected faults: cheap {}/{} requests, mid {}/{}; circuit skips: cheap {}, mid {}\n\
         outcomes: {outcomes:?}\n\
         latency: p50 {:?} p99 {:?} max {:?}\n\
         ladder RSS: warm-up {} kB -> end {} kB (max {max_rss}); fds: warm-up {} -> end of load {} -> idle {} (max {max_fds})\n\
         timeline:\n{timeline}",
        load_time.as_secs_f64(),
        sent as f64 / load_time.as_secs_f64(),
        errors.len(),
        fake(UP_CHEAP, "faults"),
        fake(UP_CHEAP, "requests"),
        fake(UP_MID, "faults"),
        fake(UP_MID, "requests"),
        count("cheap", "skipped"),
        count("mid", "skipped"),
        pct(0.5),
        pct(0.99),
        latencies.last(),
        warm.rss_kb,
        end_rss,
        warm.fds,
        last_loaded.fds,
        end_fds,
    );

    // No client-visible error: every request got a 200 and a well-formed answer.
    assert!(
        errors.is_empty(),
        "{} of {sent} requests failed; first ones:\n{}",
        errors.len(),
        errors[..errors.len().min(10)].join("\n")
    );
    // Within the deadline.
    let max = latencies.last().copied().unwrap_or_default();
    assert!(max < Duration::from_millis(TOTAL_MS + 1_000), "slowest request took {max:?}");
    // The rate was held.
    let achieved = sent as f64 / load_time.as_secs_f64();
    assert!(achieved >= 0.8 * rps, "achieved {achieved:.1}/s of {rps}/s");

    // Exactly one record per request.
    assert_eq!(gw.count_records(), sent as i64, "records in the log vs requests sent");
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a decision id was reused");
    let logged: HashSet<String> = conn
        .prepare("SELECT id FROM decisions")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(Result::unwrap)
        .collect();
    assert!(ids.iter().all(|id| logged.contains(id)), "a request has no record");
    assert!(
        outcomes.keys().all(|o| o == "success" || o == "escalated"),
        "unexpected outcomes: {outcomes:?}"
    );

    // Faults were injected at the configured rate, and the failed attempts are exactly those.
    for (model, upstream) in [("cheap", UP_CHEAP), ("mid", UP_MID), ("top", UP_TOP)] {
        assert_eq!(
            count(model, "error"),
            fake(upstream, "faults"),
            "{model}: failed attempts vs injected faults"
        );
        assert_eq!(
            count(model, "error") + count(model, "ok"),
            fake(upstream, "requests"),
            "{model}: attempts vs requests the fake saw"
        );
        assert_eq!(count(model, "check_failed"), 0, "{model}");
    }
    assert_eq!(fake(UP_TOP, "faults"), 0);
    for upstream in [UP_CHEAP, UP_MID] {
        let rate = fake(upstream, "faults") as f64 / fake(upstream, "requests").max(1) as f64;
        assert!(
            (0.5 * FAULT_RATE..=1.5 * FAULT_RATE).contains(&rate),
            "{upstream}: injected fault rate {rate:.3}"
        );
    }
    assert_eq!(stats["rejected"], 0, "the fake rejected a request Ladder sent");

    // No growth in memory or open files after warm-up.
    assert!(
        end_rss <= warm.rss_kb + RSS_GROWTH_LIMIT_KB,
        "RSS grew from {} kB to {end_rss} kB",
        warm.rss_kb
    );
    assert!(
        end_fds <= warm.fds + FD_SLACK && last_loaded.fds <= warm.fds + FD_SLACK,
        "open files grew from {} to {} (idle {end_fds})",
        warm.fds,
        last_loaded.fds
    );
    assert_eq!(gw.get("/healthz").await.status, 200);
}
