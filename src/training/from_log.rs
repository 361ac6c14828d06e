//! `ladder train --from-log`: learning from the decision log.
//!
//! Labels come for free from what Ladder already records:
//! - an attempt that failed a response check (empty, truncated, invalid JSON, refusal) is a
//!   negative for that model on that prompt;
//! - the attempt that served the answer is a positive;
//! - feedback (`POST /v1/feedback`) on the decision overrides the label of the model that served
//!   it (`failure`, or a score below 0.5, makes it a negative);
//! - transport failures (429, 5xx, timeouts) say nothing about the prompt and are not labels.
//!
//! Training fine-tunes the current heads: the difficulty head starts from, and is regularised
//! towards, the current weights; abilities are refitted per (model, task) and, for catalogue
//! models, shrunk towards the catalogue's quality (10 pseudo-observations) so that a handful of
//! outcomes cannot swing them far. The task head and the OOD centroids are kept. When the seed
//! outcomes (`../shared/data`) are present they are fitted alongside, so the head does not forget
//! them. The decision records carry the prompt features, so nothing is re-embedded and no
//! upstream is called.
//!
//! The new heads are compared with the current ones on a held-out fifth of the logged decisions
//! (log-loss, Brier score, accuracy of P(success)) and, when available, on the seed validation
//! split (APGR, task accuracy); they are written as a new version only if not worse.

use super::data::DataPaths;
use super::fit;
use crate::classifier::encoder::{Encoder, FEATURE_DIM};
use crate::classifier::heads::{Heads, HeadsStore};
use crate::config::{Config, StoreConfig};
use crate::router::{logit, sigmoid};
use crate::store::{DecisionRecord, Feedback};
use crate::task::Task;
use anyhow::{Context, bail};
use ndarray::{Array1, Array2};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

pub struct FromLogOptions {
    /// The decision log (`[store]`: SQLite file or Postgres).
    pub store: StoreConfig,
    pub since_ms: Option<i64>,
    /// The catalogue (priors for abilities, and P(success) of models without learned abilities).
    pub config: Option<Config>,
    pub heads_dir: PathBuf,
    pub model_dir: PathBuf,
    pub data: DataPaths,
    pub dry_run: bool,
}

/// One labelled (prompt, model) pair from the log.
#[derive(Debug, Clone)]
pub struct LogExample {
    pub decision_id: String,
    pub features: Vec<f32>,
    pub task: Task,
    pub model: String,
    pub correct: bool,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct LogSummary {
    pub records: usize,
    pub without_features: usize,
    pub examples: usize,
    pub positives: usize,
    pub negatives: usize,
    pub feedback_overrides: usize,
}

/// Turn records and feedback into labelled examples.
pub fn log_examples(records: &[DecisionRecord], feedback: &[Feedback]) -> (Vec<LogExample>, LogSummary) {
    let mut fb_by_decision: HashMap<&str, Vec<&Feedback>> = HashMap::new();
    for f in feedback {
        fb_by_decision.entry(f.decision_id.as_str()).or_default().push(f);
    }
    let mut summary = LogSummary {
        records: records.len(),
        ..Default::default()
    };
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    let step = (records.len() / 100).max(1);
    for (i, r) in records.iter().enumerate() {
        if (i + 1) % step == 0 || i + 1 == records.len() {
            super::progress("reading the log", i + 1, records.len(), started.elapsed().as_secs_f64());
        }
        let (Some(features), Some(task)) = (&r.embedding, r.task.as_deref().and_then(|t| t.parse::<Task>().ok())) else {
            summary.without_features += 1;
            continue;
        };
        if features.len() != FEATURE_DIM {
            summary.without_features += 1;
            continue;
        }
        let mut labels: BTreeMap<String, bool> = BTreeMap::new();
        for a in &r.attempts {
            match a.status.as_str() {
                "check_failed" => {
                    labels.insert(a.model.clone(), false);
                }
                "ok" if matches!(r.outcome.as_str(), "success" | "escalated") && r.final_model.as_deref() == Some(a.model.as_str()) => {
                    labels.insert(a.model.clone(), true);
                }
                _ => {}
            }
        }
        if let (Some(fbs), Some(model)) = (fb_by_decision.get(r.id.as_str()), &r.final_model) {
            let failed = fbs.iter().any(|f| f.outcome == "failure" || f.score.is_some_and(|s| s < 0.5));
            labels.insert(model.clone(), !failed);
            summary.feedback_overrides += 1;
        }
        for (model, correct) in labels {
            if correct {
                summary.positives += 1;
            } else {
                summary.negatives += 1;
            }
            out.push(LogExample {
                decision_id: r.id.clone(),
                features: features.clone(),
                task,
                model,
                correct,
            });
        }
    }
    if !records.is_empty() {
        eprintln!();
    }
    summary.examples = out.len();
    (out, summary)
}

fn is_holdout(decision_id: &str) -> bool {
    Sha256::digest(decision_id.as_bytes())[0] % 5 == 0
}

/// Calibration of P(success) on labelled examples.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogMetrics {
    pub n: usize,
    pub log_loss: f64,
    pub brier: f64,
    pub accuracy: f64,
}

fn ability(heads: &Heads, config: Option<&Config>, model: &str, task: Task) -> Option<f64> {
    heads
        .manifest
        .abilities
        .get(model)
        .and_then(|m| m.get(task.as_str()).copied())
        .or_else(|| config.and_then(|c| c.model(model)).map(|m| logit(m.quality.for_task(task))))
}

pub fn log_metrics(heads: &Heads, config: Option<&Config>, examples: &[&LogExample]) -> LogMetrics {
    let mut n = 0usize;
    let (mut ll, mut brier, mut acc) = (0.0, 0.0, 0.0);
    for e in examples {
        let Some(a) = ability(heads, config, &e.model, e.task) else {
            continue;
        };
        let p = sigmoid(a - heads.predict(&e.features).difficulty).clamp(1e-6, 1.0 - 1e-6);
        let y = e.correct as u8 as f64;
        ll -= y * p.ln() + (1.0 - y) * (1.0 - p).ln();
        brier += (p - y).powi(2);
        acc += ((p >= 0.5) == e.correct) as u8 as f64;
        n += 1;
    }
    let d = n.max(1) as f64;
    LogMetrics {
        n,
        log_loss: ll / d,
        brier: brier / d,
        accuracy: acc / d,
    }
}

pub struct FromLogReport {
    pub summary: LogSummary,
    pub current: Heads,
    pub new: Heads,
    pub holdout_current: LogMetrics,
    pub holdout_new: LogMetrics,
    pub seed_current: Option<super::EvalReport>,
    pub seed_new: Option<super::EvalReport>,
    pub accepted: bool,
    pub reason: String,
}

impl FromLogReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "log: {} decisions, {} without features, {} labelled examples ({} positive, {} negative, {} feedback overrides)\n\n",
            self.summary.records,
            self.summary.without_features,
            self.summary.examples,
            self.summary.positives,
            self.summary.negatives,
            self.summary.feedback_overrides
        );
        s.push_str(&format!("{:<36} {:>14} {:>14}\n", "", self.current.manifest.version, "new"));
        let row = |name: &str, a: f64, b: f64| format!("{name:<36} {a:>14.4} {b:>14.4}\n");
        s.push_str(&format!(
            "{:<36} {:>14} {:>14}\n",
            "held-out log examples", self.holdout_current.n, self.holdout_new.n
        ));
        s.push_str(&row(
            "  log-loss (lower is better)",
            self.holdout_current.log_loss,
            self.holdout_new.log_loss,
        ));
        s.push_str(&row(
            "  Brier score (lower is better)",
            self.holdout_current.brier,
            self.holdout_new.brier,
        ));
        s.push_str(&row(
            "  accuracy of P(success) >= 0.5",
            self.holdout_current.accuracy,
            self.holdout_new.accuracy,
        ));
        if let (Some(c), Some(n)) = (&self.seed_current, &self.seed_new) {
            if let (Some(pc), Some(pn)) = (&c.pooled, &n.pooled) {
                s.push_str(&row("seed validation APGR (pooled)", pc.apgr, pn.apgr));
                s.push_str(&row("seed validation ECE (pooled)", pc.ece, pn.ece));
            }
            if let (Some(tc), Some(tn)) = (&c.task, &n.task) {
                s.push_str(&row("task accuracy (hand-written test)", tc.accuracy, tn.accuracy));
            }
        }
        s.push_str(&format!(
            "\nverdict: {} ({})\n",
            if self.accepted {
                "new heads are not worse"
            } else {
                "keeping the current heads"
            },
            self.reason
        ));
        s
    }
}

pub fn train_from_log(opts: &FromLogOptions) -> anyhow::Result<FromLogReport> {
    let store = HeadsStore::new(&opts.heads_dir);
    let current = store.load_current().context("loading the current heads")?;
    let (records, feedback) = crate::store::read_log(&opts.store, opts.since_ms)?;
    let log_name = crate::store::db::Database::from_config(&opts.store)?.describe();
    let (examples, summary) = log_examples(&records, &feedback);
    if examples.is_empty() {
        bail!(
            "no labelled outcomes in {} ({} decisions, {} without prompt features: was the classifier enabled?)",
            log_name,
            summary.records,
            summary.without_features
        );
    }
    let (holdout, train): (Vec<&LogExample>, Vec<&LogExample>) = examples.iter().partition(|e| is_holdout(&e.decision_id));
    // With too few decisions for a held-out fifth, compare on the training examples (said in the verdict).
    let (eval_set, eval_note) = if holdout.len() >= 10 {
        (holdout.clone(), "held-out fifth of the log")
    } else {
        (examples.iter().collect(), "all log examples (too few for a held-out slice)")
    };
    let train = if holdout.len() >= 10 { train } else { examples.iter().collect() };

    // Seed outcomes, when present, so that fine-tuning does not forget them.
    let seed = if opts.data.shared_available() {
        let encoder = Encoder::load(&opts.model_dir, 256)?;
        let mut cache = super::EmbeddingCache::in_dir(&opts.data.training.join("cache"));
        let mut items = Vec::new();
        for f in opts.data.outcome_files() {
            items.extend(
                super::data::load_outcomes(&f)?
                    .into_iter()
                    .filter(|i| !super::data::is_validation(&i.prompt)),
            );
        }
        let texts: Vec<&str> = items.iter().map(|i| i.prompt.as_str()).collect();
        let x = super::embed_all(&encoder, &texts, &mut cache, 256, "seed outcome prompts")?;
        Some((encoder, cache, items, x))
    } else {
        eprintln!(
            "seed data not found at {}: fine-tuning on the log alone",
            opts.data.shared.display()
        );
        None
    };

    let n_seed = seed.as_ref().map_or(0, |s| s.2.len());
    let n_rows = n_seed + train.len();
    let mut x = Array2::<f32>::zeros((n_rows, FEATURE_DIM));
    if let Some((_, _, _, sx)) = &seed {
        x.slice_mut(ndarray::s![..n_seed, ..]).assign(sx);
    }
    for (k, e) in train.iter().enumerate() {
        x.row_mut(n_seed + k).assign(&ndarray::ArrayView1::from(e.features.as_slice()));
    }
    // The served difficulty subtracts the task-weighted offsets: fit in that space directly.
    let shift: Array1<f32> = x
        .rows()
        .into_iter()
        .map(|r| {
            let out = current.predict(r.as_slice().unwrap_or(&[]));
            let raw = (current.diff_w.dot(&r) + current.diff_b) as f64;
            (out.difficulty - raw) as f32
        })
        .collect();

    let mut models: Vec<String> = current.manifest.abilities.keys().cloned().collect();
    for e in &train {
        if !models.contains(&e.model) {
            models.push(e.model.clone());
        }
    }
    if let Some((_, _, items, _)) = &seed {
        for i in items {
            for m in i.outcomes.keys() {
                if !models.contains(m) {
                    models.push(m.clone());
                }
            }
        }
    }
    let model_idx = |m: &str| models.iter().position(|n| n == m).unwrap_or(0);
    let log_weight = if n_seed == 0 {
        1.0
    } else {
        ((2 * n_seed) as f32 / (4.0 * train.len() as f32)).max(1.0)
    };
    let mut obs = Vec::new();
    let mut counts: HashMap<(usize, usize), usize> = HashMap::new();
    if let Some((_, _, items, _)) = &seed {
        for (row, item) in items.iter().enumerate() {
            let task = item.source_task().unwrap_or(Task::KnowledgeQa).index();
            for (m, correct) in &item.outcomes {
                obs.push(fit::Observation {
                    item: row,
                    model: model_idx(m),
                    task,
                    correct: *correct,
                    weight: 1.0,
                });
            }
        }
    }
    for (k, e) in train.iter().enumerate() {
        let (m, t) = (model_idx(&e.model), e.task.index());
        *counts.entry((m, t)).or_default() += 1;
        obs.push(fit::Observation {
            item: n_seed + k,
            model: m,
            task: t,
            correct: e.correct,
            weight: log_weight,
        });
    }
    let init: Vec<Vec<f64>> = models
        .iter()
        .map(|m| {
            Task::ALL
                .iter()
                .map(|t| {
                    current
                        .manifest
                        .abilities
                        .get(m)
                        .and_then(|a| a.get(t.as_str()).copied())
                        .or_else(|| {
                            opts.config
                                .as_ref()
                                .and_then(|c| c.model(m))
                                .map(|mc| logit(mc.quality.for_task(*t)))
                        })
                        .unwrap_or(f64::NAN)
                })
                .collect()
        })
        .collect();
    eprintln!(
        "fitting: {} seed rows, {} log examples (weight {log_weight:.1}), {} models",
        n_seed,
        train.len(),
        models.len()
    );
    let irt = fit::fit_irt(
        &x,
        &obs,
        models.len(),
        Task::COUNT,
        &[],
        fit::IrtOptions {
            l2: 1e-2,
            epochs: 800,
            lr: 0.01,
            prior: Some((current.diff_w.clone(), current.diff_b)),
            item_shift: Some(shift),
            init_abilities: Some(init),
            ..Default::default()
        },
    );

    let mut abilities = current.manifest.abilities.clone();
    for (m, name) in models.iter().enumerate() {
        for t in Task::ALL {
            let a = irt.abilities[m][t.index()];
            if !a.is_finite() {
                continue;
            }
            let prior = opts
                .config
                .as_ref()
                .and_then(|c| c.model(name))
                .map(|mc| logit(mc.quality.for_task(*t)));
            let n = counts.get(&(m, t.index())).copied().unwrap_or(0) as f64;
            let value = match prior {
                Some(p) => (n * a + 10.0 * p) / (n + 10.0),
                None => a,
            };
            abilities.entry(name.clone()).or_default().insert(t.to_string(), value);
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let mut new = current.clone();
    new.diff_w = irt.w;
    new.diff_b = irt.b;
    new.manifest.abilities = abilities;
    new.abilities = std::sync::Arc::new(new.manifest.abilities.clone());
    new.manifest.version = format!(
        "heads-{:04}{:02}{:02}T{:02}{:02}{:02}",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    new.manifest.created_at = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let holdout_current = log_metrics(&current, opts.config.as_ref(), &eval_set);
    let holdout_new = log_metrics(&new, opts.config.as_ref(), &eval_set);
    let (seed_current, seed_new) = match seed {
        Some((encoder, mut cache, _, _)) => (
            Some(super::evaluate_heads(&current, &encoder, &mut cache, &opts.data, 256)?),
            Some(super::evaluate_heads(&new, &encoder, &mut cache, &opts.data, 256)?),
        ),
        None => (None, None),
    };
    let mut accepted = holdout_new.log_loss <= holdout_current.log_loss + 1e-3;
    let mut reason = format!(
        "log-loss {:.4} -> {:.4} on {eval_note}",
        holdout_current.log_loss, holdout_new.log_loss
    );
    if let (Some(c), Some(n)) = (&seed_current, &seed_new)
        && let (Some(pc), Some(pn)) = (&c.pooled, &n.pooled)
    {
        let ok = pn.apgr >= pc.apgr - 0.02;
        accepted &= ok;
        reason.push_str(&format!("; seed APGR {:.3} -> {:.3}", pc.apgr, pn.apgr));
    }
    new.manifest.training_data = json!({
        "from_log": {
            "db": log_name,
            "since_ms": opts.since_ms,
            "summary": summary,
            "log_weight": log_weight,
            "parent": current.manifest.version,
        },
        "seed": current.manifest.training_data,
    });
    new.manifest.metrics = json!({
        "log_holdout": holdout_new,
        "seed": seed_new.as_ref().map(|r| r.to_json()),
    });
    if accepted && !opts.dry_run {
        new.save(&opts.heads_dir)?;
        store.set_current(&new.manifest.version)?;
    }
    Ok(FromLogReport {
        summary,
        current,
        new,
        holdout_current,
        holdout_new,
        seed_current,
        seed_new,
        accepted,
        reason,
    })
}
