//! Reading the decision log for people: aggregate statistics (`GET /v1/decisions/stats`) and
//! what-if replay (`ladder replay`, `POST /v1/replay`).
//!
//! **Stats** group decisions by model, task or day and report requests, escalation and failure
//! rates, spend, and what a fixed "always the strongest model" policy would have spent on the
//! same requests (priced with the tokens each request actually used), i.e. the savings.
//!
//! **Replay** re-runs the router on logged decisions with another threshold or catalogue, using
//! the scores stored in each record, and reports how the choices, the expected cost and the
//! expected success would change. No upstream is called and nothing is re-embedded.

use crate::config::Config;
use crate::router::{self, RouteRequest};
use crate::store::DecisionRecord;
use crate::task::Task;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Model,
    Task,
    Day,
}

impl std::str::FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "model" => Ok(GroupBy::Model),
            "task" => Ok(GroupBy::Task),
            "day" => Ok(GroupBy::Day),
            other => Err(format!("group_by must be one of model, task, day; got '{other}'")),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GroupStats {
    pub requests: u64,
    pub escalated: u64,
    pub failed: u64,
    pub escalation_rate: f64,
    pub failure_rate: f64,
    pub spend_usd: f64,
    /// What "always the strongest model" would have cost for the same requests.
    pub strongest_policy_usd: f64,
    pub savings_usd: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// The catalogue model used as the "always the strongest" baseline (highest default quality).
    pub strongest_model: Option<String>,
    pub total: GroupStats,
    pub groups: BTreeMap<String, GroupStats>,
}

fn strongest(config: &Config) -> Option<&crate::config::ModelConfig> {
    config.models.iter().max_by(|a, b| a.quality.default.total_cmp(&b.quality.default))
}

fn add(g: &mut GroupStats, r: &DecisionRecord, strongest: Option<&crate::config::ModelConfig>) {
    g.requests += 1;
    g.escalated += (r.outcome == "escalated") as u64;
    g.failed += matches!(r.outcome.as_str(), "failed" | "stream_failed") as u64;
    g.spend_usd += r.total_cost_usd;
    if let Some(s) = strongest {
        // Price the tokens the serving attempt used (or the estimate) at the strongest model's rates.
        let served = r.attempts.iter().rev().find(|a| a.status == "ok");
        let (input, output) = match served {
            Some(a) => (a.prompt_tokens.max(1), a.completion_tokens),
            None => (r.prompt_tokens_estimate, 0),
        };
        g.strongest_policy_usd += s.cost_usd(input, output);
    }
}

fn finish(g: &mut GroupStats) {
    let n = g.requests.max(1) as f64;
    g.escalation_rate = g.escalated as f64 / n;
    g.failure_rate = g.failed as f64 / n;
    g.savings_usd = g.strongest_policy_usd - g.spend_usd;
}

/// Aggregate `records` (rejected requests, which never reached a model, are left out).
pub fn stats(config: &Config, records: &[DecisionRecord], group_by: Option<GroupBy>) -> Stats {
    let strong = strongest(config);
    let mut total = GroupStats::default();
    let mut groups: BTreeMap<String, GroupStats> = BTreeMap::new();
    for r in records.iter().filter(|r| r.outcome != "rejected") {
        add(&mut total, r, strong);
        if let Some(g) = group_by {
            let key = match g {
                GroupBy::Model => r.final_model.clone().unwrap_or_else(|| "(none)".into()),
                GroupBy::Task => r.task.clone().unwrap_or_else(|| "(none)".into()),
                GroupBy::Day => r.created_at.get(..10).unwrap_or("").to_string(),
            };
            add(groups.entry(key).or_default(), r, strong);
        }
    }
    finish(&mut total);
    groups.values_mut().for_each(finish);
    Stats {
        strongest_model: strong.map(|m| m.name.clone()),
        total,
        groups,
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    /// Decisions re-scored (those with stored scores that were routed with `auto`).
    pub decisions: usize,
    pub skipped: usize,
    pub changed: usize,
    pub threshold: f64,
    /// First-choice model counts, as logged and under the replayed settings.
    pub picks_before: BTreeMap<String, usize>,
    pub picks_after: BTreeMap<String, usize>,
    /// Mean expected cost and P(success) of the first choice.
    pub expected_cost_before_usd: f64,
    pub expected_cost_after_usd: f64,
    pub expected_success_before: f64,
    pub expected_success_after: f64,
}

/// Re-run the router on `records` under `config` (whose `routing.threshold` is the one to try).
pub fn replay(config: &Config, records: &[DecisionRecord]) -> ReplayReport {
    let mut rep = ReplayReport {
        threshold: config.routing.threshold,
        ..Default::default()
    };
    for r in records {
        let Some(scores) = &r.scores else {
            rep.skipped += 1;
            continue;
        };
        if r.requested_model != "auto" || r.chain.is_empty() {
            rep.skipped += 1;
            continue;
        }
        let hints = &r.hints;
        let req = RouteRequest {
            model: "auto".into(),
            task_hint: hints.get("task").and_then(|t| t.as_str()).and_then(|t| t.parse::<Task>().ok()),
            max_cost_usd: hints.get("max_cost_usd").and_then(|v| v.as_f64()),
            min_quality: None,
            allowed_models: hints.get("models").and_then(|m| serde_json::from_value(m.clone()).ok()),
            needs_tools: r.needs.iter().any(|n| n == "tools"),
            needs_vision: r.needs.iter().any(|n| n == "vision"),
            needs_json: r.needs.iter().any(|n| n == "json"),
            prompt_tokens: r.prompt_tokens_estimate,
            max_output_tokens: r.max_output_tokens,
        };
        let Ok(d) = router::decide(config, &req, scores) else {
            rep.skipped += 1;
            continue;
        };
        rep.decisions += 1;
        let before = &r.chain[0];
        let after = &d.chain[0];
        rep.changed += (before != after) as usize;
        *rep.picks_before.entry(before.clone()).or_default() += 1;
        *rep.picks_after.entry(after.clone()).or_default() += 1;
        if let Some(c) = r.candidates.iter().find(|c| &c.model == before) {
            rep.expected_cost_before_usd += c.expected_cost_usd;
            rep.expected_success_before += c.p_success;
        }
        if let Some(c) = d.candidates.iter().find(|c| &c.model == after) {
            rep.expected_cost_after_usd += c.expected_cost_usd;
            rep.expected_success_after += c.p_success;
        }
    }
    let n = rep.decisions.max(1) as f64;
    rep.expected_cost_before_usd /= n;
    rep.expected_cost_after_usd /= n;
    rep.expected_success_before /= n;
    rep.expected_success_after /= n;
    rep
}
