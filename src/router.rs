//! Routing decisions: pure logic from scores + hints + catalogue + policy to a [`Decision`].
//!
//! Nothing here does I/O or knows where the scores came from (the classifier, a hint, or the
//! configured default): [`decide`] takes a [`Scores`] value, which is what makes the decision code
//! deterministic and unit-testable, and swapping the score source a one-line change.
//!
//! The success model is a one-parameter item-response model. A catalogue model's `quality.<task>`
//! is its success rate on a typical prompt of that task; a prompt's `difficulty` is in logits
//! relative to a typical prompt (0 = typical). Then
//! `P(success | prompt, model) = Σ_t p(t) · sigmoid(logit(quality_{model,t}) − difficulty)`,
//! where `p(t)` is the task distribution (one-hot when the caller hints the task).
//! `auto` picks the cheapest eligible model whose P reaches the threshold; the fallback chain above
//! it is ordered by P (quality first), cheaper first on ties.

use crate::config::{Config, ModelConfig};
use crate::task::Task;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Fitted abilities (logits) per catalogue model and task, learned from logged outcomes by
/// `ladder train --from-log`; where present they replace `logit(quality)` from the catalogue.
pub type Abilities = BTreeMap<String, BTreeMap<String, f64>>;

/// Where a prompt's scores came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreSource {
    /// The embedding model and heads.
    Classifier,
    /// No classifier configured: the caller's hint or the configured default task.
    Hint,
    /// The classifier was unavailable for this request (queue full, error); the reason says why.
    Degraded { reason: String },
}

/// What the classifier (or its stand-in) says about a prompt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scores {
    /// Probability per task, in [`Task::ALL`] order.
    pub task_probs: Vec<f64>,
    /// Difficulty in logits relative to a typical prompt (0 = typical, higher = harder).
    pub difficulty: f64,
    /// Cosine distance from the prompt to the nearest training-data centroid (None without classifier).
    #[serde(default)]
    pub ood_distance: Option<f64>,
    /// True when the classifier judged itself unreliable for this prompt (low top probability or
    /// out of distribution): routing then starts one rung higher.
    pub low_confidence: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub low_confidence_reasons: Vec<String>,
    pub source: ScoreSource,
    /// The prompt was longer than the encoder's window and was cut (see the classifier docs).
    #[serde(default)]
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads_version: Option<String>,
    /// Abilities from the same heads version (not logged: the manifest has them).
    #[serde(skip)]
    pub abilities: Option<Arc<Abilities>>,
}

impl Scores {
    /// Scores that carry no information beyond a task: typical difficulty, full confidence in `task`.
    pub fn for_task(task: Task, source: ScoreSource) -> Scores {
        let mut task_probs = vec![0.0; Task::COUNT];
        task_probs[task.index()] = 1.0;
        Scores {
            task_probs,
            difficulty: 0.0,
            ood_distance: None,
            low_confidence: false,
            low_confidence_reasons: Vec::new(),
            source,
            truncated: false,
            heads_version: None,
            abilities: None,
        }
    }

    pub fn top_task(&self) -> (Task, f64) {
        let mut best = (Task::ALL[0], f64::MIN);
        for (t, p) in Task::ALL.iter().zip(&self.task_probs) {
            if *p > best.1 {
                best = (*t, *p);
            }
        }
        best
    }
}

/// What the request itself asks for, independent of scores.
#[derive(Debug, Clone, Default)]
pub struct RouteRequest {
    /// `auto` or a catalogue model name.
    pub model: String,
    pub task_hint: Option<Task>,
    pub max_cost_usd: Option<f64>,
    pub min_quality: Option<f64>,
    /// Allow-list from the request (`ladder.models`).
    pub allowed_models: Option<Vec<String>>,
    pub needs_tools: bool,
    pub needs_vision: bool,
    pub needs_json: bool,
    pub prompt_tokens: u64,
    pub max_output_tokens: Option<u64>,
}

/// One catalogue model as the router saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Candidate {
    pub model: String,
    pub p_success: f64,
    pub expected_cost_usd: f64,
    /// Quality of the model for the effective task (from the catalogue).
    pub quality: f64,
    /// True when P(success) used abilities learned from the log instead of the catalogue quality.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub learned: bool,
    /// Why this model cannot serve the request (policy), if it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskSource {
    Hint,
    Classifier,
    Default,
}

/// The router's answer: the rungs to try, in order, and the numbers behind them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    /// `auto` or `explicit` (the client named a model).
    pub mode: String,
    /// The task routing used (hint, else the classifier's top task, else the default).
    pub task: Task,
    pub task_source: TaskSource,
    pub threshold: f64,
    pub difficulty: f64,
    pub candidates: Vec<Candidate>,
    /// Models to try, in order. Never empty.
    pub chain: Vec<String>,
    /// Human-readable account of why `chain[0]` was chosen.
    pub reason: String,
}

/// Why no decision could be made: the request is a client error.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteError {
    UnknownModel(String),
    NoCandidate { reasons: Vec<String>, context_exceeded: bool },
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::UnknownModel(m) => write!(
                f,
                "The model '{m}' does not exist in this Ladder catalogue; use 'auto' or one of the names from GET /v1/models"
            ),
            RouteError::NoCandidate { reasons, .. } => {
                write!(f, "no model in the catalogue can serve this request: {}", reasons.join("; "))
            }
        }
    }
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

pub fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

/// P(success) of `model` for a prompt with these task probabilities and difficulty, and whether
/// a learned ability was used.
pub fn p_success(model: &ModelConfig, task_probs: &[f64], difficulty: f64, learned: Option<&Abilities>) -> (f64, bool) {
    let learned = learned.and_then(|a| a.get(&model.name));
    let mut used_learned = false;
    let p = Task::ALL
        .iter()
        .zip(task_probs)
        .filter(|(_, p)| **p > 0.0)
        .map(|(t, p)| {
            let ability = match learned.and_then(|m| m.get(t.as_str())) {
                Some(a) => {
                    used_learned = true;
                    *a
                }
                None => logit(model.quality.for_task(*t)),
            };
            p * sigmoid(ability - difficulty)
        })
        .sum();
    (p, used_learned)
}

/// Decide which models to try for a request.
pub fn decide(config: &Config, req: &RouteRequest, scores: &Scores) -> Result<Decision, RouteError> {
    let explicit = req.model != "auto";
    if explicit && config.model(&req.model).is_none() {
        return Err(RouteError::UnknownModel(req.model.clone()));
    }
    let (task, task_source) = match req.task_hint {
        Some(t) => (t, TaskSource::Hint),
        None if scores.source == ScoreSource::Classifier => (scores.top_task().0, TaskSource::Classifier),
        None => (config.routing.default_task, TaskSource::Default),
    };
    // A hint overrides the predicted task, not the difficulty.
    let probs: Vec<f64> = if req.task_hint.is_some() || scores.source != ScoreSource::Classifier {
        let mut v = vec![0.0; Task::COUNT];
        v[task.index()] = 1.0;
        v
    } else {
        scores.task_probs.clone()
    };
    let threshold = req.min_quality.unwrap_or(config.routing.threshold);

    let candidates: Vec<Candidate> = config
        .models
        .iter()
        .map(|m| {
            let out_tokens = req
                .max_output_tokens
                .unwrap_or(config.routing.expected_output_tokens)
                .min(m.max_output_tokens.unwrap_or(u64::MAX));
            let expected_cost_usd = m.cost_usd(req.prompt_tokens, out_tokens);
            let (p_success, learned) = p_success(m, &probs, scores.difficulty, scores.abilities.as_deref());
            Candidate {
                model: m.name.clone(),
                p_success,
                learned,
                expected_cost_usd,
                quality: m.quality.for_task(task),
                skipped: policy_skip(m, req, expected_cost_usd),
            }
        })
        .collect();

    let eligible = |name: &str| candidates.iter().find(|c| c.model == name && c.skipped.is_none());
    let mut chain: Vec<String>;
    let mut reason: String;

    if explicit {
        let first = candidates.iter().find(|c| c.model == req.model).expect("checked above");
        let model_cfg = config.model(&req.model).expect("checked above");
        chain = Vec::new();
        if first.skipped.is_none() {
            chain.push(first.model.clone());
        }
        match &model_cfg.fallbacks {
            Some(fallbacks) => chain.extend(fallbacks.iter().filter(|f| eligible(f).is_some()).cloned()),
            None => chain.extend(quality_ladder_above(&candidates, first.p_success, &first.model)),
        }
        reason = match &first.skipped {
            None => format!("client asked for '{}'", req.model),
            Some(why) => format!("client asked for '{}', skipped by policy ({why})", req.model),
        };
    } else {
        let ordered: Vec<&Candidate> = match config.routing.chains.get(&task) {
            Some(names) => names.iter().filter_map(|n| eligible(n)).collect(),
            None => {
                let mut v: Vec<&Candidate> = candidates.iter().filter(|c| c.skipped.is_none()).collect();
                v.sort_by(|a, b| {
                    a.expected_cost_usd
                        .total_cmp(&b.expected_cost_usd)
                        .then(b.p_success.total_cmp(&a.p_success))
                });
                v
            }
        };
        let explicit_chain = config.routing.chains.contains_key(&task);
        let pick = ordered.iter().find(|c| c.p_success >= threshold).copied();
        let mut pick = match pick {
            Some(c) => {
                reason = format!(
                    "cheapest eligible model with P(success) {:.3} >= threshold {:.2} (expected cost ${:.6})",
                    c.p_success, threshold, c.expected_cost_usd
                );
                Some(c)
            }
            None => {
                let best = ordered.iter().copied().max_by(|a, b| a.p_success.total_cmp(&b.p_success));
                reason = match best {
                    Some(c) => format!(
                        "no eligible model reaches threshold {:.2}; picking the most likely to succeed (P {:.3})",
                        threshold, c.p_success
                    ),
                    None => String::new(),
                };
                best
            }
        };
        chain = Vec::new();
        if let Some(p) = pick.take() {
            let rest: Vec<String> = if explicit_chain {
                let pos = ordered.iter().position(|c| c.model == p.model).unwrap_or(0);
                ordered[pos + 1..].iter().map(|c| c.model.clone()).collect()
            } else {
                quality_ladder_above(&candidates, p.p_success, &p.model)
            };
            chain.push(p.model.clone());
            chain.extend(rest);
            if scores.low_confidence && chain.len() > 1 {
                let skipped = chain.remove(0);
                reason = format!(
                    "{reason}; classifier confidence is low ({}), so routing starts one rung higher than '{skipped}'",
                    scores.low_confidence_reasons.join(", ")
                );
            }
        }
    }

    if chain.is_empty() {
        let reasons: Vec<String> = candidates
            .iter()
            .filter_map(|c| c.skipped.as_ref().map(|s| format!("{}: {s}", c.model)))
            .collect();
        let context_exceeded = candidates
            .iter()
            .all(|c| c.skipped.as_deref().is_some_and(|s| s.starts_with("context")));
        return Err(RouteError::NoCandidate { reasons, context_exceeded });
    }
    Ok(Decision {
        mode: if explicit { "explicit".into() } else { "auto".into() },
        task,
        task_source,
        threshold,
        difficulty: scores.difficulty,
        candidates,
        chain,
        reason,
    })
}

/// Eligible models strictly better than `p_floor` (or as good, other than `except`), ordered by
/// P(success) ascending so that each escalation climbs one rung, cheaper first on ties.
fn quality_ladder_above(candidates: &[Candidate], p_floor: f64, except: &str) -> Vec<String> {
    let mut above: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.skipped.is_none() && c.model != except && c.p_success >= p_floor)
        .collect();
    above.sort_by(|a, b| {
        a.p_success
            .total_cmp(&b.p_success)
            .then(a.expected_cost_usd.total_cmp(&b.expected_cost_usd))
    });
    above.into_iter().map(|c| c.model.clone()).collect()
}

/// The policy checks that make a model unable to serve a request, before any attempt.
fn policy_skip(m: &ModelConfig, req: &RouteRequest, expected_cost: f64) -> Option<String> {
    if let Some(allowed) = &req.allowed_models
        && !allowed.iter().any(|a| a == &m.name)
    {
        return Some("not in the request's allow-list".into());
    }
    let needed = req.prompt_tokens + req.max_output_tokens.unwrap_or(0);
    if needed > m.context_window {
        return Some(format!(
            "context window: ~{} prompt tokens + {} output tokens exceed {}",
            req.prompt_tokens,
            req.max_output_tokens.unwrap_or(0),
            m.context_window
        ));
    }
    for (needed, cap) in [(req.needs_tools, "tools"), (req.needs_vision, "vision"), (req.needs_json, "json")] {
        if needed && !m.has_capability(cap) {
            return Some(format!("missing capability '{cap}'"));
        }
    }
    if let Some(cap) = req.max_cost_usd
        && expected_cost > cap
    {
        return Some(format!("expected cost ${expected_cost:.6} exceeds max_cost_usd ${cap}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_toml(
            r#"
            [[providers]]
            name = "p"
            kind = "openai"
            base_url = "http://127.0.0.1:1/v1"
            [[models]]
            name = "cheap"
            provider = "p"
            input_price = 0.1
            output_price = 0.2
            context_window = 4000
            quality = { default = 0.6, math = 0.3 }
            [[models]]
            name = "mid"
            provider = "p"
            input_price = 1.0
            output_price = 2.0
            context_window = 32000
            capabilities = ["tools", "json"]
            quality = { default = 0.8, math = 0.7 }
            [[models]]
            name = "frontier"
            provider = "p"
            input_price = 10.0
            output_price = 30.0
            context_window = 128000
            capabilities = ["tools", "json", "vision"]
            quality = { default = 0.93, math = 0.92 }
            "#,
        )
        .unwrap()
    }

    fn auto(tokens: u64) -> RouteRequest {
        RouteRequest {
            model: "auto".into(),
            prompt_tokens: tokens,
            ..Default::default()
        }
    }

    fn classified(task: Task, difficulty: f64) -> Scores {
        let mut s = Scores::for_task(task, ScoreSource::Classifier);
        s.difficulty = difficulty;
        s
    }

    #[test]
    fn easy_prompt_goes_to_the_cheapest_model_and_the_chain_climbs_by_quality() {
        let d = decide(&config(), &auto(100), &classified(Task::Chat, -1.0)).unwrap();
        assert_eq!(d.chain, vec!["cheap", "mid", "frontier"]);
        assert_eq!(d.task, Task::Chat);
        let cheap = &d.candidates[0];
        assert!((cheap.p_success - sigmoid(logit(0.6) + 1.0)).abs() < 1e-9);
    }

    #[test]
    fn harder_prompts_climb_the_ladder() {
        let c = config();
        let mid = decide(&c, &auto(100), &classified(Task::Chat, 0.5)).unwrap();
        assert_eq!(mid.chain, vec!["mid", "frontier"]);
        let hard = decide(&c, &auto(100), &classified(Task::Chat, 2.5)).unwrap();
        assert_eq!(hard.chain, vec!["frontier"]);
        assert!(hard.reason.contains("no eligible model reaches"), "{}", hard.reason);
    }

    #[test]
    fn task_hint_overrides_task_but_not_difficulty() {
        let c = config();
        let mut req = auto(100);
        req.task_hint = Some(Task::Math);
        let d = decide(&c, &req, &classified(Task::Chat, -1.0)).unwrap();
        assert_eq!(d.task, Task::Math);
        assert_eq!(d.task_source, TaskSource::Hint);
        // math quality of cheap is 0.3: sigmoid(logit(.3)+1) = 0.54 < 0.7; mid: sigmoid(logit(.7)+1)=0.86
        assert_eq!(d.chain[0], "mid");
    }

    #[test]
    fn threshold_is_the_cost_quality_knob() {
        let c = config();
        let mut req = auto(100);
        // At difficulty 0.5: P(cheap) = 0.476, P(mid) = 0.708, P(frontier) = 0.897.
        req.min_quality = Some(0.45);
        assert_eq!(decide(&c, &req, &classified(Task::Chat, 0.5)).unwrap().chain[0], "cheap");
        req.min_quality = Some(0.7);
        assert_eq!(decide(&c, &req, &classified(Task::Chat, 0.5)).unwrap().chain[0], "mid");
        req.min_quality = Some(0.9);
        assert_eq!(decide(&c, &req, &classified(Task::Chat, 0.5)).unwrap().chain[0], "frontier");
    }

    #[test]
    fn task_uncertainty_mixes_probabilities() {
        let c = config();
        let mut s = classified(Task::Chat, 0.0);
        s.task_probs = vec![0.0; Task::COUNT];
        s.task_probs[Task::Chat.index()] = 0.5;
        s.task_probs[Task::Math.index()] = 0.5;
        let d = decide(&c, &auto(10), &s).unwrap();
        let cheap = d.candidates.iter().find(|c| c.model == "cheap").unwrap();
        assert!((cheap.p_success - 0.45).abs() < 1e-9);
    }

    #[test]
    fn low_confidence_starts_one_rung_higher() {
        let mut s = classified(Task::Chat, -1.0);
        s.low_confidence = true;
        s.low_confidence_reasons = vec!["top task probability 0.21".into()];
        let d = decide(&config(), &auto(100), &s).unwrap();
        assert_eq!(d.chain, vec!["mid", "frontier"]);
        assert!(d.reason.contains("one rung higher"));
    }

    #[test]
    fn policy_skips_are_recorded() {
        let c = config();
        let mut req = auto(10_000);
        req.needs_tools = true;
        let d = decide(&c, &req, &classified(Task::Chat, -2.0)).unwrap();
        assert_eq!(d.chain, vec!["mid", "frontier"]);
        assert!(d.candidates[0].skipped.as_ref().unwrap().contains("context window"));
        req.prompt_tokens = 10;
        req.needs_vision = true;
        let d = decide(&c, &req, &classified(Task::Chat, -2.0)).unwrap();
        assert_eq!(d.chain, vec!["frontier"]);
        assert!(d.candidates[1].skipped.as_ref().unwrap().contains("vision"));
        let mut req = auto(10);
        req.allowed_models = Some(vec!["mid".into()]);
        assert_eq!(decide(&c, &req, &classified(Task::Chat, -2.0)).unwrap().chain, vec!["mid"]);
        let mut req = auto(1000);
        // Expected costs at 1000 prompt + 300 output tokens: mid $0.0016, frontier $0.019.
        req.max_cost_usd = Some(0.002);
        let d = decide(&c, &req, &classified(Task::Chat, 1.5)).unwrap();
        assert_eq!(d.chain, vec!["mid"], "frontier is over the price cap");
    }

    #[test]
    fn nothing_fits_is_a_client_error() {
        let err = decide(&config(), &auto(1_000_000), &classified(Task::Chat, 0.0)).unwrap_err();
        match err {
            RouteError::NoCandidate { context_exceeded, reasons } => {
                assert!(context_exceeded);
                assert_eq!(reasons.len(), 3);
            }
            other => panic!("{other:?}"),
        }
        let err = decide(
            &config(),
            &RouteRequest {
                model: "gpt-9".into(),
                ..Default::default()
            },
            &classified(Task::Chat, 0.0),
        );
        assert_eq!(err.unwrap_err(), RouteError::UnknownModel("gpt-9".into()));
    }

    #[test]
    fn explicit_model_is_tried_first_then_the_ladder_above_it() {
        let c = config();
        let req = RouteRequest {
            model: "mid".into(),
            prompt_tokens: 10,
            ..Default::default()
        };
        let d = decide(&c, &req, &Scores::for_task(Task::Chat, ScoreSource::Hint)).unwrap();
        assert_eq!(d.mode, "explicit");
        assert_eq!(d.chain, vec!["mid", "frontier"]);
    }

    #[test]
    fn explicit_task_chains_are_respected() {
        let mut c = config();
        c.routing.chains.insert(Task::Code, vec!["mid".into(), "frontier".into()]);
        let mut req = auto(10);
        req.task_hint = Some(Task::Code);
        let d = decide(&c, &req, &classified(Task::Code, -3.0)).unwrap();
        assert_eq!(d.chain, vec!["mid", "frontier"], "cheap is not in the code chain");
    }
}
