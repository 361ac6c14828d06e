//! The classifier heads: small models on top of the sentence embedding.
//!
//! - **task**: linear softmax over the [`Task`] taxonomy (12 classes);
//! - **difficulty**: linear regression to a difficulty in logits (0 = a typical prompt), fitted as
//!   the item parameter of a one-parameter IRT model from real per-prompt outcomes (see
//!   `training::fit`);
//! - **ood**: k-means centroids of the training embeddings; a prompt whose cosine distance to the
//!   nearest centroid exceeds the manifest's `ood_threshold` is out of distribution.
//!
//! A heads version is a directory `models/heads/<version>/` with `heads.safetensors` and
//! `manifest.json` (taxonomy, training data hashes, metrics, fitted model abilities);
//! `models/heads/CURRENT` names the active version.

use crate::task::Task;
use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use ndarray::{Array1, Array2, ArrayView1};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Manifest {
    pub version: String,
    pub created_at: String,
    pub embedding_model: String,
    pub embedding_dim: usize,
    /// Task names in the order of the task head's outputs.
    pub taxonomy: Vec<String>,
    /// Cosine distance to the nearest centroid above which a prompt is out of distribution.
    pub ood_threshold: f32,
    /// Fitted abilities (logits) of the models seen in outcome data, per task; sigmoid(ability) is
    /// the model's success rate on a typical prompt of that task.
    #[serde(default)]
    pub abilities: BTreeMap<String, BTreeMap<String, f64>>,
    /// Mean raw difficulty of each task's training prompts; subtracted (weighted by the task
    /// probabilities) so that 0 means "a typical prompt of its task".
    #[serde(default)]
    pub difficulty_offsets: BTreeMap<String, f64>,
    /// Training inputs: file -> sha256 and counts.
    #[serde(default)]
    pub training_data: serde_json::Value,
    /// Held-out metrics measured when the heads were trained.
    #[serde(default)]
    pub metrics: serde_json::Value,
}

/// Trained head weights.
#[derive(Debug, Clone)]
pub struct Heads {
    pub manifest: Manifest,
    pub task_w: Array2<f32>,
    pub task_b: Array1<f32>,
    pub diff_w: Array1<f32>,
    pub diff_b: f32,
    pub centroids: Array2<f32>,
    /// `manifest.difficulty_offsets` in [`Task::ALL`] order.
    pub offsets: Vec<f64>,
    /// `manifest.abilities`, shared with every score these heads produce.
    pub abilities: std::sync::Arc<crate::router::Abilities>,
}

/// What the heads say about one embedding.
#[derive(Debug, Clone)]
pub struct HeadOutput {
    pub task_probs: Vec<f64>,
    pub difficulty: f64,
    pub ood_distance: f64,
}

pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let exps: Vec<f64> = logits.iter().map(|l| (*l as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

impl Heads {
    pub fn predict(&self, embedding: &[f32]) -> HeadOutput {
        let e = ArrayView1::from(embedding);
        let logits = self.task_w.dot(&e) + &self.task_b;
        let task_probs = softmax(logits.as_slice().unwrap_or(&[]));
        let raw = (self.diff_w.dot(&e) + self.diff_b) as f64;
        let difficulty = raw - task_probs.iter().zip(&self.offsets).map(|(p, o)| p * o).sum::<f64>();
        let norm = e.dot(&e).sqrt().max(1e-12);
        let sims = self.centroids.dot(&e);
        let best = sims.iter().cloned().fold(f32::MIN, f32::max) / norm;
        HeadOutput {
            task_probs,
            difficulty,
            ood_distance: (1.0 - best).max(0.0) as f64,
        }
    }

    /// Read a heads version directory.
    pub fn load(dir: &Path) -> anyhow::Result<Heads> {
        let manifest: Manifest = serde_json::from_str(
            &std::fs::read_to_string(dir.join("manifest.json")).with_context(|| format!("reading {}/manifest.json", dir.display()))?,
        )
        .with_context(|| format!("parsing {}/manifest.json", dir.display()))?;
        let expected: Vec<String> = Task::ALL.iter().map(|t| t.to_string()).collect();
        if manifest.taxonomy != expected {
            bail!(
                "heads {} were trained for taxonomy {:?}, this build uses {:?}",
                dir.display(),
                manifest.taxonomy,
                expected
            );
        }
        let tensors = candle_core::safetensors::load(dir.join("heads.safetensors"), &Device::Cpu)
            .with_context(|| format!("reading {}/heads.safetensors", dir.display()))?;
        let get2 = |name: &str| -> anyhow::Result<Array2<f32>> {
            let t = tensors
                .get(name)
                .with_context(|| format!("heads.safetensors has no tensor '{name}'"))?;
            let (r, c) = t.dims2()?;
            Ok(Array2::from_shape_vec((r, c), t.flatten_all()?.to_vec1::<f32>()?)?)
        };
        let get1 = |name: &str| -> anyhow::Result<Array1<f32>> {
            let t = tensors
                .get(name)
                .with_context(|| format!("heads.safetensors has no tensor '{name}'"))?;
            Ok(Array1::from_vec(t.flatten_all()?.to_vec1::<f32>()?))
        };
        let heads = Heads {
            task_w: get2("task.weight")?,
            task_b: get1("task.bias")?,
            diff_w: get1("difficulty.weight")?,
            diff_b: get1("difficulty.bias")?.first().copied().unwrap_or(0.0),
            centroids: get2("ood.centroids")?,
            offsets: Task::ALL
                .iter()
                .map(|t| manifest.difficulty_offsets.get(t.as_str()).copied().unwrap_or(0.0))
                .collect(),
            abilities: std::sync::Arc::new(manifest.abilities.clone()),
            manifest,
        };
        let dim = heads.manifest.embedding_dim;
        if heads.task_w.dim() != (Task::COUNT, dim)
            || heads.task_b.len() != Task::COUNT
            || heads.diff_w.len() != dim
            || heads.centroids.ncols() != dim
        {
            bail!("heads {} have inconsistent shapes", dir.display());
        }
        Ok(heads)
    }

    /// Write this version to `root/<version>/`.
    pub fn save(&self, root: &Path) -> anyhow::Result<PathBuf> {
        let dir = root.join(&self.manifest.version);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let to_t2 = |a: &Array2<f32>| Tensor::from_vec(a.iter().cloned().collect::<Vec<f32>>(), a.dim(), &Device::Cpu);
        let to_t1 = |a: &Array1<f32>| Tensor::from_vec(a.to_vec(), a.len(), &Device::Cpu);
        let mut map: HashMap<String, Tensor> = HashMap::new();
        map.insert("task.weight".into(), to_t2(&self.task_w)?);
        map.insert("task.bias".into(), to_t1(&self.task_b)?);
        map.insert("difficulty.weight".into(), to_t1(&self.diff_w)?);
        map.insert("difficulty.bias".into(), Tensor::from_vec(vec![self.diff_b], 1, &Device::Cpu)?);
        map.insert("ood.centroids".into(), to_t2(&self.centroids)?);
        candle_core::safetensors::save(&map, dir.join("heads.safetensors"))?;
        std::fs::write(dir.join("manifest.json"), serde_json::to_string_pretty(&self.manifest)? + "\n")?;
        Ok(dir)
    }
}

/// The versions under a heads root, and which one is current.
pub struct HeadsStore {
    pub root: PathBuf,
}

impl HeadsStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HeadsStore { root: root.into() }
    }

    pub fn current_version(&self) -> anyhow::Result<String> {
        let path = self.root.join("CURRENT");
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (train heads with `ladder train`)", path.display()))?
            .trim()
            .to_string())
    }

    pub fn load_current(&self) -> anyhow::Result<Heads> {
        let v = self.current_version()?;
        Heads::load(&self.root.join(&v))
    }

    /// Make `version` current (atomically: write then rename).
    pub fn set_current(&self, version: &str) -> anyhow::Result<()> {
        if !self.root.join(version).join("manifest.json").exists() {
            bail!("no heads version '{version}' under {}", self.root.display());
        }
        let tmp = self.root.join("CURRENT.tmp");
        std::fs::write(&tmp, format!("{version}\n"))?;
        std::fs::rename(&tmp, self.root.join("CURRENT"))?;
        Ok(())
    }

    pub fn versions(&self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for entry in rd.flatten() {
                if entry.path().join("manifest.json").exists() {
                    out.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        Ok(out)
    }
}
