//! The fault matrix: every upstream fault × {OpenAI-kind, Anthropic-kind upstream} × {stream,
//! non-stream} × {fallback available, no fallback}, against real `ladder serve` and
//! `ladder fake-provider` processes.
//!
//! Each fault, provider kind and mode has its own catalogue model (`<fault>-<api>-<mode>`) whose
//! fake model always behaves as the fault. Its fallback is a healthy model of the other provider
//! kind. A cell with a fallback names the model; a cell without one names it too but allows only
//! it (`ladder.models`), so the chain has one rung. Cells run concurrently; the 17 MiB bodies,
//! which cost the fake real CPU time, run after the timing-sensitive cells.
//!
//! For every cell: a fallback gives a well-formed OpenAI answer from the next rung (streams: proper
//! chunks, usage, one `[DONE]`); no fallback gives a clean OpenAI error with the status decided
//! below; a stream that breaks after output reached the client ends with an explicit error event
//! (no fallback is possible then). Every request ends within `total_ms` (+ slack), and leaves
//! exactly one decision record whose attempts name the fault. The fake's request counts must match
//! the recorded attempts (no hidden retries).
//!
//! Statuses without a fallback, and why:
//! - 429 (with or without `retry-after`): 429 `rate_limit_exceeded`, passing the upstream's
//!   `retry-after` on (what is left of it) so that SDKs back off for the right time.
//! - 500, 502, 503, connection refused or reset, a body cut short, malformed JSON, wrong content
//!   type, oversized body: 502 `upstream_error` (the gateway got no valid answer upstream).
//! - hang, and a stream's first byte later than `first_byte_ms`: 504 `upstream_timeout`.
//! - a slow first byte within `attempt_ms` (non-stream): not a failure, 200 from the model itself.
//! - a stream dropped after output started: 200, output, then `data: {"error": ...}`
//!   (`stream_interrupted`) and no `[DONE]`, fallback or not.

mod common;

use common::*;
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

const ATTEMPT_MS: u64 = 1_000;
const FIRST_BYTE_MS: u64 = 300;
const TOTAL_MS: u64 = 2_500;
const MAX_RETRY_AFTER_MS: u64 = 1_000;
/// Time allowed past `total_ms`: committing the record and writing the response, on a loaded
/// two-core machine.
const SLACK_MS: u64 = 750;
/// Cells in flight at once.
const CONCURRENCY: usize = 12;
/// A slow first byte: later than `first_byte_ms`, within `attempt_ms`.
const SLOW_MS: u64 = 600;
/// Retry-after short enough to honour (under `max_retry_after_ms`).
const SHORT_RETRY_AFTER_MS: u64 = 300;
const LONG_RETRY_AFTER_S: u64 = 30;

/// What a fault does to a request, in one mode (stream or not).
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// `tries` failed attempts of `kind` on the faulty model; then the next rung answers, or, with
    /// no next rung, the client gets `status` with error `code`.
    Fails {
        tries: usize,
        kind: &'static str,
        status: u16,
        code: &'static str,
    },
    /// The faulty model answers after all (slow, but within its limits).
    Answers,
    /// Output reached the client, then the upstream stream broke.
    BreaksMidStream,
}

/// How a fault behaves in one mode: its fate, and the least time it must take (its own delay).
#[derive(Clone, Copy, Debug)]
struct Mode {
    fate: Fate,
    min_ms: u64,
}

struct Fault {
    name: &'static str,
    /// The fake's behaviour; `None`: the provider has nothing listening (connection refused).
    behavior: Option<Value>,
    /// The behaviour for streams, when it differs.
    stream_behavior: Option<Value>,
    non_stream: Mode,
    stream: Mode,
    /// `retry-after` the client must get when there is no fallback: (whole seconds, most ms).
    retry_after: Option<(u64, u64)>,
}

const fn fails(tries: usize, kind: &'static str, status: u16, code: &'static str, min_ms: u64) -> Mode {
    Mode {
        fate: Fate::Fails { tries, kind, status, code },
        min_ms,
    }
}

fn faults() -> Vec<Fault> {
    let both = |m: Mode| (m, m);
    let row = |name, behavior: Option<Value>, (non_stream, stream): (Mode, Mode)| Fault {
        name,
        behavior,
        stream_behavior: None,
        non_stream,
        stream,
        retry_after: None,
    };
    let gateway = |tries, kind| both(fails(tries, kind, 502, "upstream_error", 0));
    let limited = |tries, min_ms| both(fails(tries, "http_429", 429, "rate_limit_exceeded", min_ms));
    vec![
        row("429", Some(status(429)), limited(2, 0)),
        Fault {
            retry_after: Some((1, SHORT_RETRY_AFTER_MS)),
            ..row(
                "429-retry-after",
                Some(json!({"kind": "status", "status": 429, "retry_after_ms": SHORT_RETRY_AFTER_MS})),
                // Honoured: the retry waits for it.
                limited(2, SHORT_RETRY_AFTER_MS),
            )
        },
        Fault {
            retry_after: Some((LONG_RETRY_AFTER_S, LONG_RETRY_AFTER_S * 1000)),
            ..row(
                "429-long-retry-after",
                Some(json!({"kind": "status", "status": 429, "retry_after_s": LONG_RETRY_AFTER_S})),
                // Past max_retry_after_ms: no retry, straight to the next rung.
                limited(1, 0),
            )
        },
        row("500", Some(status(500)), gateway(2, "http_500")),
        row("502", Some(status(502)), gateway(2, "http_502")),
        row("503", Some(status(503)), gateway(2, "http_503")),
        row("refused", None, gateway(2, "connect_error")),
        row("reset", Some(json!({"kind": "reset"})), gateway(2, "connect_error")),
        row(
            "hang",
            Some(json!({"kind": "hang"})),
            (
                fails(1, "timeout_attempt", 504, "upstream_timeout", ATTEMPT_MS),
                fails(1, "timeout_first_byte", 504, "upstream_timeout", FIRST_BYTE_MS),
            ),
        ),
        row(
            "slow-first-byte",
            Some(json!({"kind": "slow_first_byte", "delay_ms": SLOW_MS})),
            (
                Mode {
                    fate: Fate::Answers,
                    min_ms: SLOW_MS,
                },
                fails(1, "timeout_first_byte", 504, "upstream_timeout", FIRST_BYTE_MS),
            ),
        ),
        row(
            "drop-before-output",
            Some(json!({"kind": "drop_stream", "after_chunks": 0})),
            // Non-streaming, a body cut short is a broken connection: retried.
            (
                fails(2, "connect_error", 502, "upstream_error", 0),
                fails(1, "stream_error", 502, "upstream_error", 0),
            ),
        ),
        row(
            "drop-midway",
            Some(json!({"kind": "drop_stream", "after_chunks": 2})),
            (
                fails(2, "connect_error", 502, "upstream_error", 0),
                Mode {
                    fate: Fate::BreaksMidStream,
                    min_ms: 0,
                },
            ),
        ),
        row(
            "malformed-json",
            Some(json!({"kind": "malformed_json"})),
            gateway(1, "malformed_response"),
        ),
        row(
            "wrong-content-type",
            Some(json!({"kind": "wrong_content_type"})),
            gateway(1, "malformed_response"),
        ),
        Fault {
            // One SSE comment line past providers::sse::MAX_EVENT_BYTES (1 MiB).
            stream_behavior: Some(json!({"kind": "oversized", "bytes": 2 * 1024 * 1024})),
            ..row(
                // Past providers::MAX_RESPONSE_BYTES (16 MiB).
                "oversized",
                Some(json!({"kind": "oversized", "bytes": 17 * 1024 * 1024})),
                gateway(1, "oversized_response"),
            )
        },
    ]
}

/// The two provider kinds: (suffix, provider, provider with nothing listening, fallback model).
const APIS: [(&str, &str, &str, &str); 2] = [
    ("openai", "fake-openai", "dead", "fb-anthropic"),
    ("anthropic", "fake-anthropic", "dead-anthropic", "fb-openai"),
];

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn model(name: &'static str, provider: &'static str, upstream: &'static str, fallbacks: Vec<&'static str>) -> ModelOpts {
    ModelOpts {
        name,
        provider,
        upstream,
        input_price: 1.0,
        output_price: 2.0,
        context_window: 32_000,
        capabilities: vec![],
        quality_default: 0.8,
        quality_math: 0.8,
        fallbacks: Some(fallbacks),
    }
}

struct Cell {
    fault: &'static str,
    api: &'static str,
    model: &'static str,
    fallback: Option<&'static str>,
    stream: bool,
    mode: Mode,
    retry_after: Option<(u64, u64)>,
}

impl Cell {
    fn label(&self) -> String {
        format!(
            "{} {} {} {}",
            self.fault,
            self.api,
            if self.stream { "stream" } else { "non-stream" },
            if self.fallback.is_some() { "fallback" } else { "no-fallback" }
        )
    }
}

/// What a cell got back.
struct Outcome {
    status: u16,
    attempts: usize,
    elapsed: Duration,
    decision_id: Option<String>,
    /// Failed expectations, empty when the cell passed.
    problems: Vec<String>,
}

async fn run_cell(gw: &Gateway, i: usize, cell: &Cell) -> Outcome {
    let mut body = req(cell.model, &format!("Fault matrix cell {i}: say something useful."));
    if cell.fallback.is_none() {
        body["ladder"] = json!({"models": [cell.model]});
    }
    let mut problems = Vec::new();
    let (status, headers, elapsed) = if cell.stream {
        body["stream_options"] = json!({"include_usage": true});
        let s = gw.stream(&body).await;
        match (cell.mode.fate, cell.fallback) {
            (Fate::Fails { .. }, Some(fb)) => check(&mut problems, "stream", || assert_stream_shape(&s, fb, true)),
            (Fate::Answers, _) => check(&mut problems, "stream", || assert_stream_shape(&s, cell.model, true)),
            (Fate::BreaksMidStream, _) => check(&mut problems, "stream", || assert_stream_error_end(&s, cell.model)),
            (Fate::Fails { status, code, .. }, None) => check_error(&mut problems, &s.as_reply(), status, code, cell.retry_after),
        }
        (s.status, s.headers, s.elapsed)
    } else {
        let r = gw.chat(&body).await;
        match (cell.mode.fate, cell.fallback) {
            (Fate::Fails { .. }, Some(fb)) => check(&mut problems, "answer", || assert_openai_completion(&r, fb)),
            (Fate::Answers, _) => check(&mut problems, "answer", || assert_openai_completion(&r, cell.model)),
            (Fate::BreaksMidStream, _) => unreachable!("only streams break mid-stream"),
            (Fate::Fails { status, code, .. }, None) => check_error(&mut problems, &r, status, code, cell.retry_after),
        }
        (r.status, r.headers, r.elapsed)
    };
    let ms = elapsed.as_millis() as u64;
    if ms > TOTAL_MS + SLACK_MS {
        problems.push(format!("took {ms} ms, past total_ms {TOTAL_MS} + {SLACK_MS}"));
    }
    if ms < cell.mode.min_ms {
        problems.push(format!("took {ms} ms, less than the fault's own {} ms", cell.mode.min_ms));
    }
    let attempts = header(&headers, "x-ladder-attempts").and_then(|a| a.parse().ok()).unwrap_or(0);
    let decision_id = header(&headers, "x-ladder-decision-id");
    if decision_id.is_none() {
        problems.push("no x-ladder-decision-id".into());
    }
    Outcome {
        status,
        attempts,
        elapsed,
        decision_id,
        problems,
    }
}

/// A clean OpenAI-shaped error with the expected status and code.
fn check_error(problems: &mut Vec<String>, r: &Reply, status: u16, code: &str, retry_after: Option<(u64, u64)>) {
    check(problems, "error", || {
        assert_eq!(r.status, status, "{}", r.text);
        assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
        let (kind, got_code, message) = r.api_error();
        assert_eq!(got_code, code, "{}", r.text);
        let expected_kind = match status {
            429 => "rate_limit_error",
            504 => "timeout_error",
            _ => "server_error",
        };
        assert_eq!(kind, expected_kind);
        assert!(message.contains("every model in the chain"), "{message}");
        assert_eq!(r.model(), None, "an error names no serving model");
        match retry_after {
            Some((secs, most_ms)) => {
                assert_eq!(r.header("retry-after"), Some(secs.to_string()), "retry-after");
                let ms: u64 = r.header("retry-after-ms").expect("retry-after-ms").parse().expect("a number");
                // What is left of the upstream's wait: at most all of it, and most of it (the
                // response was sent right after the last 429).
                assert!(
                    ms <= most_ms && ms + 200 >= most_ms,
                    "retry-after-ms {ms} for an upstream {most_ms}"
                );
            }
            None => assert_eq!(r.header("retry-after"), None, "no retry-after without the upstream's"),
        }
    });
}

/// The decision record of a cell agrees with the reply and the fault.
fn check_record(cell: &Cell, out: &mut Outcome, rec: &Value) {
    let (status, attempts) = (out.status, out.attempts);
    check(&mut out.problems, "record", || {
        assert_eq!(rec["http_status"], status, "record status vs reply");
        assert_eq!(rec["stream"], cell.stream);
        let mut expected_chain = vec![cell.model.to_string()];
        expected_chain.extend(cell.fallback.map(str::to_string));
        assert_eq!(chain(rec), expected_chain);
        let summary = attempt_summary(rec);
        assert_eq!(summary.len(), attempts, "x-ladder-attempts vs record: {summary:?}");
        let (outcome, expected, final_model) = match cell.mode.fate {
            Fate::Fails { tries, kind, .. } => {
                let mut v: Vec<String> = (0..tries).map(|_| format!("{}:error:{kind}", cell.model)).collect();
                match cell.fallback {
                    Some(fb) => {
                        v.push(format!("{fb}:ok"));
                        ("escalated", v, Some(fb))
                    }
                    None => ("failed", v, None),
                }
            }
            Fate::Answers => ("success", vec![format!("{}:ok", cell.model)], Some(cell.model)),
            Fate::BreaksMidStream => (
                "stream_failed",
                vec![format!("{}:error:stream_error", cell.model)],
                Some(cell.model),
            ),
        };
        assert_eq!(summary, expected);
        assert_eq!(rec["outcome"], outcome);
        assert_eq!(rec["final_model"].as_str(), final_model);
        if matches!(outcome, "failed" | "stream_failed") {
            assert!(rec["error"].as_str().is_some_and(|e| !e.is_empty()), "the record has no error");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_in_every_mode_gets_an_answer_or_a_clean_error_within_the_deadline() {
    let faults = faults();
    let mut models = vec![
        model("fb-openai", "fake-openai", "up-fb-openai", vec![]),
        model("fb-anthropic", "fake-anthropic", "up-fb-anthropic", vec![]),
    ];
    let mut scenario = serde_json::Map::new();
    let mut cells = Vec::new();
    // Upstream model -> catalogue model, for the request counts.
    let mut upstream_of: HashMap<&'static str, &'static str> = HashMap::new();
    for f in &faults {
        for (api, provider, dead, fb) in APIS {
            for stream in [false, true] {
                let name = leak(format!("{}-{api}-{}", f.name, if stream { "s" } else { "ns" }));
                let upstream = leak(format!("up-{name}"));
                let provider = if f.behavior.is_some() { provider } else { dead };
                models.push(model(name, provider, upstream, vec![fb]));
                upstream_of.insert(name, upstream);
                let behavior = if stream {
                    f.stream_behavior.as_ref().or(f.behavior.as_ref())
                } else {
                    f.behavior.as_ref()
                };
                if let Some(b) = behavior {
                    scenario.insert(upstream.into(), json!({"fail_rate": 1.0, "fail_with": b}));
                }
                for fallback in [Some(fb), None] {
                    cells.push(Cell {
                        fault: f.name,
                        api,
                        model: name,
                        fallback,
                        stream,
                        mode: if stream { f.stream } else { f.non_stream },
                        retry_after: f.retry_after,
                    });
                }
            }
        }
    }
    let gw = Gateway::start_with(Opts {
        models,
        attempt_ms: ATTEMPT_MS,
        first_byte_ms: FIRST_BYTE_MS,
        idle_ms: 500,
        total_ms: TOTAL_MS,
        connect_ms: 300,
        max_per_model: 1,
        max_retry_after_ms: MAX_RETRY_AFTER_MS,
        ..Opts::default()
    })
    .await;
    gw.set_scenario(json!({"seed": 1, "models": scenario})).await;

    let t0 = std::time::Instant::now();
    let heavy = |c: &Cell| c.fault == "oversized" && !c.stream;
    let mut outcomes: Vec<(usize, Outcome)> = Vec::new();
    for phase in [false, true] {
        let batch: Vec<(usize, Outcome)> = futures::stream::iter(cells.iter().enumerate().filter(|(_, c)| heavy(c) == phase))
            .map(|(i, cell)| {
                let gw = &gw;
                async move { (i, run_cell(gw, i, cell).await) }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        outcomes.extend(batch);
    }
    outcomes.sort_by_key(|(i, _)| *i);
    let wall = t0.elapsed();

    // Exactly one record per request: through the API, in the file, and per reply.
    let ids = gw.decision_ids().await;
    let rows = gw.count_records();
    let mut per_model_attempts: HashMap<String, u64> = HashMap::new();
    for (i, out) in &mut outcomes {
        let cell = &cells[*i];
        let Some(id) = out.decision_id.clone() else { continue };
        let n = ids.iter().filter(|x| **x == id).count();
        if n != 1 {
            out.problems.push(format!("{n} records with id {id}"));
            continue;
        }
        let rec = gw.decision(&id).await;
        check_record(cell, out, &rec);
        for a in rec["attempts"].as_array().into_iter().flatten() {
            if a["status"] != "skipped" {
                *per_model_attempts
                    .entry(a["model"].as_str().unwrap_or("?").to_string())
                    .or_default() += 1;
            }
        }
    }

    // The table.
    let mut table = format!(
        "{:<48} {:>6} {:>8} {:>9}  result\n",
        "cell (fault api mode fallback)", "status", "attempts", "elapsed"
    );
    for (i, out) in &outcomes {
        table.push_str(&format!(
            "{:<48} {:>6} {:>8} {:>7}ms  {}\n",
            cells[*i].label(),
            out.status,
            out.attempts,
            out.elapsed.as_millis(),
            if out.problems.is_empty() {
                "ok".to_string()
            } else {
                format!("FAIL: {}", out.problems.join("; "))
            }
        ));
    }
    eprintln!(
        "{table}{} cells in {:.1} s; {} records in the log ({} through the API)",
        cells.len(),
        wall.as_secs_f64(),
        rows,
        ids.len()
    );

    let failed: Vec<String> = outcomes
        .iter()
        .filter(|(_, o)| !o.problems.is_empty())
        .map(|(i, o)| format!("{}: {}", cells[*i].label(), o.problems.join("; ")))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} cells failed:\n{}",
        failed.len(),
        cells.len(),
        failed.join("\n")
    );
    assert_eq!(rows as usize, cells.len(), "records in the log vs requests sent");
    assert_eq!(ids.len(), cells.len(), "records through GET /v1/decisions vs requests sent");

    // The fake saw exactly the attempts the records list (no hidden or lost retries).
    let stats = gw.fake_stats().await;
    assert_eq!(stats["rejected"], 0, "the fake rejected a request Ladder sent: {stats}");
    for (model, upstream) in &upstream_of {
        if model.starts_with("refused-") {
            assert_eq!(stats["models"][upstream]["requests"], Value::Null, "nothing listens for {model}");
            continue;
        }
        let recorded = per_model_attempts.get(*model).copied().unwrap_or(0);
        assert_eq!(
            stats["models"][upstream]["requests"], recorded,
            "requests reaching {upstream}: {stats}"
        );
    }
    for fb in ["fb-openai", "fb-anthropic"] {
        let recorded = per_model_attempts.get(fb).copied().unwrap_or(0);
        assert!(recorded > 0);
        assert_eq!(stats["models"][&format!("up-{fb}")]["requests"], recorded, "{stats}");
    }
    assert_eq!(gw.get("/healthz").await.status, 200);
}
