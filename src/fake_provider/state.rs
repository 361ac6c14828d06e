//! Shared, mutable state of one fake-provider instance.
//!
//! Holds the live [`Scenario`] (replaceable through the control plane), the
//! per-model request counters that index into each model's `sequence`, the
//! per-model seeded RNGs behind `fail_rate`, request statistics, and a short
//! log of recent request bodies for tests that want to inspect exactly what
//! Ladder sent upstream.
//!
//! All locks are plain `std::sync::Mutex`es held for a few instructions and
//! never across an `.await`. A poisoned lock is recovered rather than
//! propagated: the data behind it is simple counters.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::answer::fnv1a;
use super::scenario::{Behavior, ModelConfig, Scenario};

/// How many recent requests `GET /_fake/requests` remembers.
const REQUEST_LOG_LEN: usize = 256;

/// Which upstream API a request came in through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Api {
    Openai,
    Anthropic,
    Gemini,
}

/// Per-model statistics, as reported by `GET /_fake/stats`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ModelStats {
    /// Requests that passed authentication and validation.
    pub requests: u64,
    pub stream_requests: u64,
    pub openai_requests: u64,
    pub anthropic_requests: u64,
    pub gemini_requests: u64,
    /// Requests answered with a 200 answer (good or bad).
    pub answered: u64,
    pub good_answers: u64,
    pub bad_answers: u64,
    /// Requests that got an injected fault (status, hang, reset, ...).
    pub faults: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Requests currently being served (streams count until their end).
    pub in_flight: u64,
    pub max_in_flight: u64,
}

/// One entry of the recent-request log.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LoggedRequest {
    pub api: Api,
    pub model: String,
    pub stream: bool,
    /// Selected request headers (auth values redacted).
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

#[derive(Default)]
struct Counters {
    /// Index of the next request per model (for `sequence`).
    next: HashMap<String, usize>,
    rngs: HashMap<String, StdRng>,
    stats: BTreeMap<String, ModelStats>,
    /// Requests rejected before reaching a model (auth, validation).
    rejected: u64,
    log: VecDeque<LoggedRequest>,
}

/// State shared by all handlers of one instance.
pub(crate) struct Shared {
    scenario: Mutex<Arc<Scenario>>,
    counters: Mutex<Counters>,
    /// Cancelled when the server shuts down; wakes up hanging requests.
    pub shutdown: CancellationToken,
}

pub(crate) type AppState = Arc<Shared>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub fn new(scenario: Scenario, shutdown: CancellationToken) -> AppState {
        Arc::new(Shared {
            scenario: Mutex::new(Arc::new(scenario)),
            counters: Mutex::new(Counters::default()),
            shutdown,
        })
    }

    /// A snapshot of the live scenario.
    pub fn scenario(&self) -> Arc<Scenario> {
        lock(&self.scenario).clone()
    }

    /// Replaces the scenario and resets sequence counters and RNGs (stats are
    /// kept; use [`Shared::reset`] to zero them).
    pub fn replace_scenario(&self, scenario: Scenario) {
        // Take both locks so no request sees the new scenario with old counters.
        let mut counters = lock(&self.counters);
        *lock(&self.scenario) = Arc::new(scenario);
        counters.next.clear();
        counters.rngs.clear();
    }

    /// Zeroes stats, sequence counters, RNGs and the request log.
    pub fn reset(&self) {
        let mut counters = lock(&self.counters);
        let in_flight: Vec<(String, u64)> = counters
            .stats
            .iter()
            .filter(|(_, s)| s.in_flight > 0)
            .map(|(k, s)| (k.clone(), s.in_flight))
            .collect();
        *counters = Counters::default();
        // Keep in-flight gauges consistent with the guards still alive.
        for (model, n) in in_flight {
            counters.stats.entry(model).or_default().in_flight = n;
        }
    }

    pub fn note_rejected(&self) {
        lock(&self.counters).rejected += 1;
    }

    /// Registers a request to `model` and decides its behaviour: the next
    /// `sequence` entry if any is left, else, with probability `fail_rate`,
    /// one of `fail_mix` (uniformly) or `fail_with`, else `ok`.
    pub fn begin_request(
        self: &Arc<Self>,
        api: Api,
        model: &str,
        stream: bool,
        config: &ModelConfig,
        seed: u64,
        log: LoggedRequest,
    ) -> (Behavior, InFlightGuard) {
        let mut c = lock(&self.counters);
        let idx = {
            let next = c.next.entry(model.to_string()).or_insert(0);
            let idx = *next;
            *next = next.saturating_add(1);
            idx
        };
        let behaviour = if let Some(b) = config.sequence.get(idx) {
            b.clone()
        } else if config.fail_rate > 0.0 {
            let rng = c
                .rngs
                .entry(model.to_string())
                .or_insert_with(|| StdRng::seed_from_u64(seed ^ fnv1a(model.as_bytes())));
            if !rng.random_bool(config.fail_rate.clamp(0.0, 1.0)) {
                Behavior::Ok
            } else if config.fail_mix.is_empty() {
                config.fail_with.clone()
            } else {
                config.fail_mix[rng.random_range(0..config.fail_mix.len())].clone()
            }
        } else {
            Behavior::Ok
        };

        let s = c.stats.entry(model.to_string()).or_default();
        s.requests += 1;
        if stream {
            s.stream_requests += 1;
        }
        match api {
            Api::Openai => s.openai_requests += 1,
            Api::Anthropic => s.anthropic_requests += 1,
            Api::Gemini => s.gemini_requests += 1,
        }
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);

        if c.log.len() >= REQUEST_LOG_LEN {
            c.log.pop_front();
        }
        c.log.push_back(log);

        let guard = InFlightGuard {
            shared: Arc::clone(self),
            model: model.to_string(),
        };
        (behaviour, guard)
    }

    pub fn note_fault(&self, model: &str) {
        lock(&self.counters).stats.entry(model.to_string()).or_default().faults += 1;
    }

    pub fn note_answer(&self, model: &str, good: bool, prompt_tokens: u64, completion_tokens: u64) {
        let mut c = lock(&self.counters);
        let s = c.stats.entry(model.to_string()).or_default();
        s.answered += 1;
        if good {
            s.good_answers += 1;
        } else {
            s.bad_answers += 1;
        }
        s.prompt_tokens += prompt_tokens;
        s.completion_tokens += completion_tokens;
    }

    /// The `GET /_fake/stats` document.
    pub fn stats_json(&self) -> Value {
        let c = lock(&self.counters);
        let total: u64 = c.stats.values().map(|s| s.requests).sum();
        serde_json::json!({
            "models": c.stats,
            "total": total,
            "rejected": c.rejected,
        })
    }

    /// The `GET /_fake/requests` document (oldest first).
    pub fn requests_json(&self) -> Value {
        let c = lock(&self.counters);
        serde_json::json!({ "requests": c.log })
    }
}

/// Decrements the model's in-flight gauge when dropped (at the end of the
/// handler, or at the end of the response stream it is moved into).
pub(crate) struct InFlightGuard {
    shared: Arc<Shared>,
    model: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut c = lock(&self.shared.counters);
        if let Some(s) = c.stats.get_mut(&self.model) {
            s.in_flight = s.in_flight.saturating_sub(1);
        }
    }
}
