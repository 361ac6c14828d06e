//! The classifier: scores every prompt for task type, difficulty and confidence.
//!
//! Shape (after text-embeddings-inference): an async front ([`Classifier::score`]) puts jobs on a
//! bounded queue; dedicated inference threads ([`pool`]) take whatever is queued, up to
//! `classifier.max_batch`, run one batched forward pass of the [`encoder`] and apply the
//! [`heads`]. Tokio worker threads never run model code. When the queue is full the request is not
//! made to wait: it routes with the fallback policy (the hint, else the default task, at typical
//! difficulty), and its decision record says `source: degraded` with the reason. Repeated prompts
//! hit an in-memory embedding cache and skip the encoder entirely.
//!
//! Heads can be swapped at run time ([`Classifier::reload_heads`]); a batch always finishes on the
//! heads it started with.

pub mod encoder;
pub mod fused;
pub mod heads;
pub mod pool;
pub mod qgemm;

pub use fused::Precision;

use crate::config::ClassifierConfig;
use crate::router::{ScoreSource, Scores};
use crate::task::Task;
use crate::wire::RoutingText;
use heads::{Heads, HeadsStore};
use std::sync::{Arc, RwLock};

/// The classifier service.
pub struct Classifier {
    pool: pool::Pool,
    /// What runs the encoder's linear layers (`Encoder::describe`), for `/healthz`.
    precision: String,
    /// Inference workers and threads per worker (0 = the shared pool), for `/healthz`.
    workers: (usize, usize),
    heads: Arc<RwLock<Arc<Heads>>>,
    heads_store: HeadsStore,
    min_task_confidence: f64,
}

/// Why a prompt could not be scored by the model.
#[derive(Debug, Clone)]
pub enum ScoreError {
    QueueFull,
    Failed(String),
}

impl std::fmt::Display for ScoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScoreError::QueueFull => write!(f, "classifier queue full"),
            ScoreError::Failed(m) => write!(f, "classifier failed: {m}"),
        }
    }
}

impl Classifier {
    pub fn load(cfg: &ClassifierConfig, min_task_confidence: f64) -> anyhow::Result<Classifier> {
        let heads_store = HeadsStore::new(&cfg.heads_dir);
        let heads = Arc::new(RwLock::new(Arc::new(heads_store.load_current()?)));
        let encoder = encoder::Encoder::load_with(&cfg.model_dir, cfg.max_tokens, cfg.precision)?;
        let precision = encoder.describe();
        let workers = (cfg.worker_count(), cfg.threads_per_worker);
        tracing::info!(precision = %precision, workers = workers.0, threads_per_worker = workers.1, "encoder loaded");
        let pool = pool::Pool::start(encoder, heads.clone(), cfg)?;
        Ok(Classifier {
            pool,
            precision,
            workers,
            heads,
            heads_store,
            min_task_confidence,
        })
    }

    pub fn heads(&self) -> Arc<Heads> {
        self.heads.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Load the current heads version from disk and make it live for new batches.
    pub fn reload_heads(&self) -> anyhow::Result<String> {
        let new = Arc::new(self.heads_store.load_current()?);
        let version = new.manifest.version.clone();
        *self.heads.write().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(version)
    }

    /// Score a prompt. Returns the scores and the embedding.
    pub async fn score(&self, text: &RoutingText) -> Result<(Scores, Vec<f32>), ScoreError> {
        let out = self.pool.submit(text).await?;
        let mut reasons = Vec::new();
        let (top_task, top_p) = {
            let (i, p) = out
                .head
                .task_probs
                .iter()
                .enumerate()
                .fold((0, f64::MIN), |b, (i, p)| if *p > b.1 { (i, *p) } else { b });
            (Task::ALL[i], p)
        };
        if top_p < self.min_task_confidence {
            reasons.push(format!(
                "top task probability {top_p:.2} ({top_task}) < {:.2}",
                self.min_task_confidence
            ));
        }
        if out.head.ood_distance > out.ood_threshold as f64 {
            reasons.push(format!(
                "out of distribution (distance {:.3} > {:.3})",
                out.head.ood_distance, out.ood_threshold
            ));
        }
        let scores = Scores {
            task_probs: out.head.task_probs,
            difficulty: out.head.difficulty,
            ood_distance: Some(out.head.ood_distance),
            low_confidence: !reasons.is_empty(),
            low_confidence_reasons: reasons,
            source: ScoreSource::Classifier,
            truncated: out.truncated,
            heads_version: Some(out.heads_version),
            abilities: Some(out.abilities),
        };
        Ok((scores, out.embedding))
    }
}

/// Where `auto` gets its scores: the classifier, or (when disabled) hints and the default task.
pub enum Scorer {
    Off,
    On(Arc<Classifier>),
}

impl Scorer {
    pub fn from_config(cfg: &ClassifierConfig, min_task_confidence: f64) -> anyhow::Result<Scorer> {
        if !cfg.enabled {
            return Ok(Scorer::Off);
        }
        Ok(Scorer::On(Arc::new(Classifier::load(cfg, min_task_confidence)?)))
    }

    /// Scores for routing. Never fails: without a usable classifier the hint (else the default
    /// task) stands in, at typical difficulty, and the source says why.
    pub async fn score(&self, text: &RoutingText, hint: Option<Task>, default_task: Task) -> (Scores, Option<Vec<f32>>) {
        let fallback_task = hint.unwrap_or(default_task);
        match self {
            Scorer::Off => (Scores::for_task(fallback_task, ScoreSource::Hint), None),
            Scorer::On(c) => match c.score(text).await {
                Ok((scores, emb)) => (scores, Some(emb)),
                Err(e) => {
                    tracing::warn!(error = %e, "routing with the fallback policy");
                    (
                        Scores::for_task(fallback_task, ScoreSource::Degraded { reason: e.to_string() }),
                        None,
                    )
                }
            },
        }
    }

    pub fn classifier(&self) -> Option<&Arc<Classifier>> {
        match self {
            Scorer::On(c) => Some(c),
            Scorer::Off => None,
        }
    }

    pub fn describe(&self) -> serde_json::Value {
        match self {
            Scorer::Off => serde_json::json!({"enabled": false}),
            Scorer::On(c) => serde_json::json!({
                "enabled": true,
                "heads_version": c.heads().manifest.version,
                "queue_depth": c.pool.queue_depth(),
                "precision": c.precision,
                "workers": c.workers.0,
                "threads_per_worker": c.workers.1,
            }),
        }
    }
}
