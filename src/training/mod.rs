//! Training and evaluation of the classifier heads: `ladder train` and `ladder eval`.
//!
//! [`train`] embeds the training data with the real encoder (cached on disk under
//! `training/cache/`), fits the task head, the difficulty head with the model abilities, and the
//! out-of-distribution centroids ([`fit`]), measures them on held-out data ([`eval`]), and writes a
//! new heads version under `models/heads/` with a manifest of its inputs and metrics.
//! [`evaluate`] prints the router metrics of the current heads on any outcome file.

pub mod data;
pub mod eval;
pub mod fit;
pub mod from_log;

use crate::classifier::encoder::{Encoder, FEATURE_DIM};
use crate::classifier::heads::{Heads, HeadsStore, Manifest};
use crate::router::{logit, sigmoid};
use crate::task::Task;
use anyhow::{Context, bail};
use data::{DataPaths, Labelled, OutcomeItem};
use ndarray::Array2;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Version tag of the text -> tokens rule; part of the embedding cache key.
const EMBED_RULE: &str = "features-head-tail-focus16-v2";

/// On-disk cache of embeddings keyed by sha256(rule, max_tokens, text).
pub struct EmbeddingCache {
    path: PathBuf,
    map: HashMap<[u8; 16], Vec<f32>>,
    pending: Vec<([u8; 16], Vec<f32>)>,
}

impl EmbeddingCache {
    /// The cache file for the current feature rule inside `dir`.
    pub fn in_dir(dir: &Path) -> EmbeddingCache {
        Self::in_dir_for(dir, crate::classifier::Precision::F32)
    }

    /// The cache file for embeddings computed at `precision` (f32: the file [`Self::in_dir`] names).
    pub fn in_dir_for(dir: &Path, precision: crate::classifier::Precision) -> EmbeddingCache {
        let suffix = match precision.resolve() {
            crate::classifier::Precision::F32 => String::new(),
            p => format!("-{p}"),
        };
        Self::open(dir.join(format!("embeddings-{EMBED_RULE}-{FEATURE_DIM}{suffix}.bin")))
    }

    pub fn open(path: PathBuf) -> EmbeddingCache {
        let mut map = HashMap::new();
        if let Ok(mut f) = std::fs::File::open(&path) {
            let mut buf = Vec::new();
            if f.read_to_end(&mut buf).is_ok() {
                let rec = 16 + 4 * FEATURE_DIM;
                for chunk in buf.chunks_exact(rec) {
                    let mut key = [0u8; 16];
                    key.copy_from_slice(&chunk[..16]);
                    let v = chunk[16..]
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    map.insert(key, v);
                }
            }
        }
        EmbeddingCache {
            path,
            map,
            pending: Vec::new(),
        }
    }

    fn key(text: &str, max_tokens: usize) -> [u8; 16] {
        let mut h = Sha256::new();
        h.update(EMBED_RULE.as_bytes());
        h.update(max_tokens.to_le_bytes());
        h.update(text.as_bytes());
        let d = h.finalize();
        let mut k = [0u8; 16];
        k.copy_from_slice(&d[..16]);
        k
    }

    pub fn save(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        let mut buf = Vec::with_capacity(self.pending.len() * (16 + 4 * FEATURE_DIM));
        for (k, v) in self.pending.drain(..) {
            buf.extend_from_slice(&k);
            for x in v {
                buf.extend_from_slice(&x.to_le_bytes());
            }
        }
        f.write_all(&buf)?;
        Ok(())
    }
}

/// Embed texts as the server would (routing truncation rule), with the cache and a progress bar.
pub fn embed_all(
    encoder: &Encoder,
    texts: &[&str],
    cache: &mut EmbeddingCache,
    max_tokens: usize,
    label: &str,
) -> anyhow::Result<Array2<f32>> {
    let keys: Vec<[u8; 16]> = texts.iter().map(|t| EmbeddingCache::key(t, max_tokens)).collect();
    let mut todo: Vec<usize> = (0..texts.len()).filter(|i| !cache.map.contains_key(&keys[*i])).collect();
    let mut fresh: HashMap<usize, Vec<f32>> = HashMap::new();
    if !todo.is_empty() {
        let tokenized: Vec<_> = todo
            .iter()
            .map(|i| encoder.tokenize_prompt("", texts[*i]))
            .collect::<anyhow::Result<_>>()?;
        let mut order: Vec<usize> = (0..todo.len()).collect();
        order.sort_by_key(|j| tokenized[*j].ids.len());
        let started = std::time::Instant::now();
        let total = order.len();
        for (bi, batch) in order.chunks(32).enumerate() {
            let toks: Vec<&crate::classifier::encoder::Tokenized> = batch.iter().map(|j| &tokenized[*j]).collect();
            let embs = encoder.features(&toks)?;
            for (j, e) in batch.iter().zip(embs) {
                fresh.insert(todo[*j], e);
            }
            let done = ((bi + 1) * 32).min(total);
            progress(label, done, total, started.elapsed().as_secs_f64());
        }
        eprintln!();
        for (i, e) in &fresh {
            cache.map.insert(keys[*i], e.clone());
            cache.pending.push((keys[*i], e.clone()));
        }
        cache.save()?;
        todo.clear();
    }
    let mut out = Array2::<f32>::zeros((texts.len(), FEATURE_DIM));
    for (i, k) in keys.iter().enumerate() {
        let v = cache.map.get(k).context("embedding missing from cache")?;
        out.row_mut(i).assign(&ndarray::ArrayView1::from(v.as_slice()));
    }
    Ok(out)
}

/// A one-line progress bar on stderr.
pub fn progress(label: &str, done: usize, total: usize, secs: f64) {
    let width = 30;
    let filled = (done * width) / total.max(1);
    let rate = done as f64 / secs.max(1e-9);
    let eta = (total - done) as f64 / rate.max(1e-9);
    eprint!(
        "\r{label:<24} [{}{}] {done}/{total} {rate:.0}/s eta {eta:.0}s   ",
        "#".repeat(filled),
        "-".repeat(width - filled)
    );
}

pub struct TrainOptions {
    pub data: DataPaths,
    pub model_dir: PathBuf,
    pub heads_dir: PathBuf,
    pub max_tokens: usize,
    pub dry_run: bool,
    /// Prompts sampled from each dataset source for the task head.
    pub per_source: usize,
}

/// Rows of `x` selected by `idx`.
fn rows(x: &Array2<f32>, idx: &[usize]) -> Array2<f32> {
    x.select(ndarray::Axis(0), idx)
}

/// The outcome data split into train and validation, with embeddings.
struct OutcomeSet {
    items: Vec<OutcomeItem>,
    x: Array2<f32>,
    train: Vec<usize>,
    val: Vec<usize>,
}

fn load_outcome_set(opts: &TrainOptions, encoder: &Encoder, cache: &mut EmbeddingCache) -> anyhow::Result<(OutcomeSet, Vec<PathBuf>)> {
    let files = opts.data.outcome_files();
    let mut items = Vec::new();
    for f in &files {
        items.extend(data::load_outcomes(f)?);
    }
    let texts: Vec<&str> = items.iter().map(|i| i.prompt.as_str()).collect();
    let x = embed_all(encoder, &texts, cache, opts.max_tokens, "outcome prompts")?;
    let (val, train): (Vec<usize>, Vec<usize>) = (0..items.len()).partition(|i| data::is_validation(&items[*i].prompt));
    Ok((OutcomeSet { items, x, train, val }, files))
}

/// Train new heads; returns them (already saved unless `dry_run`).
pub fn train(opts: &TrainOptions) -> anyhow::Result<Heads> {
    if !opts.data.shared_available() {
        bail!(
            "training needs the outcome data at {} (../shared/data); it is not there",
            opts.data.shared.display()
        );
    }
    let encoder = Encoder::load(&opts.model_dir, opts.max_tokens)?;
    let mut cache = EmbeddingCache::in_dir(&opts.data.training.join("cache"));

    // Task head.
    let tasks = data::load_task_data(&opts.data, opts.per_source)?;
    let texts: Vec<&str> = tasks.train.iter().map(|l| l.prompt.as_str()).collect();
    let xt = embed_all(&encoder, &texts, &mut cache, opts.max_tokens, "task prompts")?;
    let y: Vec<usize> = tasks.train.iter().map(|l| l.task.index()).collect();
    let mut counts = [0usize; Task::COUNT];
    for c in &y {
        counts[*c] += 1;
    }
    let weights: Vec<f32> = y.iter().map(|c| 1.0 / counts[*c].max(1) as f32).collect();
    eprintln!("fitting the task head on {} prompts", y.len());
    let (task_w, task_b) = fit::fit_softmax(&xt, &y, Task::COUNT, &weights, 1e-5, 1500, 0.05);

    // Difficulty head + abilities.
    let (outcomes, outcome_files) = load_outcome_set(opts, &encoder, &mut cache)?;
    let mut model_names: Vec<String> = outcomes.items.iter().flat_map(|i| i.outcomes.keys().cloned()).collect();
    model_names.sort();
    model_names.dedup();
    // One matrix: outcome training rows, then anchor rows (hand-written prompts of tasks without outcomes).
    let with_outcomes: Vec<Task> = {
        let mut v: Vec<Task> = outcomes.items.iter().filter_map(|i| i.source_task()).collect();
        v.sort();
        v.dedup();
        v
    };
    let anchors: Vec<&Labelled> = tasks
        .train
        .iter()
        .filter(|l| l.source.starts_with("handwritten") && !with_outcomes.contains(&l.task))
        .collect();
    let n_out = outcomes.train.len();
    let mut x_all = Array2::<f32>::zeros((n_out + anchors.len(), FEATURE_DIM));
    x_all
        .slice_mut(ndarray::s![..n_out, ..])
        .assign(&rows(&outcomes.x, &outcomes.train));
    let anchor_idx: Vec<usize> = tasks
        .train
        .iter()
        .enumerate()
        .filter(|(_, l)| l.source.starts_with("handwritten") && !with_outcomes.contains(&l.task))
        .map(|(i, _)| i)
        .collect();
    x_all.slice_mut(ndarray::s![n_out.., ..]).assign(&rows(&xt, &anchor_idx));
    let mut obs = Vec::new();
    for (row, &i) in outcomes.train.iter().enumerate() {
        let item = &outcomes.items[i];
        let task = item.source_task().unwrap_or(Task::KnowledgeQa).index();
        for (m, correct) in &item.outcomes {
            let model = model_names.iter().position(|n| n == m).unwrap_or(0);
            obs.push(fit::Observation {
                item: row,
                model,
                task,
                correct: *correct,
                weight: 1.0,
            });
        }
    }
    let anchor_rows: Vec<usize> = (n_out..n_out + anchors.len()).collect();
    eprintln!(
        "fitting the difficulty head on {} outcomes of {} prompts ({} anchors)",
        obs.len(),
        n_out,
        anchors.len()
    );
    let irt_opts = fit::IrtOptions {
        anchor_weight: 0.2,
        l2: 1e-3,
        epochs: 1500,
        lr: 0.01,
        ..Default::default()
    };
    let irt = fit::fit_irt(&x_all, &obs, model_names.len(), Task::COUNT, &anchor_rows, irt_opts);

    // Per-task offsets so that difficulty 0 = typical prompt of the task.
    let raw = x_all.dot(&irt.w) + irt.b;
    let mut offsets = BTreeMap::new();
    for t in Task::ALL {
        let vals: Vec<f32> = if with_outcomes.contains(t) {
            outcomes
                .train
                .iter()
                .enumerate()
                .filter(|(_, i)| outcomes.items[**i].source_task() == Some(*t))
                .map(|(r, _)| raw[r])
                .collect()
        } else {
            anchors
                .iter()
                .enumerate()
                .filter(|(_, l)| l.task == *t)
                .map(|(k, _)| raw[n_out + k])
                .collect()
        };
        let mean = if vals.is_empty() {
            0.0
        } else {
            vals.iter().sum::<f32>() as f64 / vals.len() as f64
        };
        offsets.insert(t.to_string(), mean);
    }
    let mut abilities = BTreeMap::new();
    for (m, name) in model_names.iter().enumerate() {
        let mut per = BTreeMap::new();
        for t in Task::ALL {
            let a = irt.abilities[m][t.index()];
            if a.is_finite() {
                per.insert(t.to_string(), a - offsets[t.as_str()]);
            }
        }
        abilities.insert(name.clone(), per);
    }

    // Out-of-distribution centroids: threshold from held-out distances.
    let pool_idx: Vec<usize> = (0..outcomes.train.len()).step_by(4).collect();
    let mut pool = ndarray::concatenate(ndarray::Axis(0), &[xt.view(), rows(&x_all, &pool_idx).view()])?;
    for mut r in pool.rows_mut() {
        let norm = r.dot(&r).sqrt().max(1e-12);
        r.mapv_inplace(|v| v / norm);
    }
    let (fit_rows, held_rows): (Vec<usize>, Vec<usize>) = (0..pool.nrows()).partition(|i| i % 5 != 0);
    let c_fit = fit::spherical_kmeans(&rows(&pool, &fit_rows), 32, 25);
    let held = rows(&pool, &held_rows).dot(&c_fit.t());
    let mut dists: Vec<f32> = held
        .rows()
        .into_iter()
        .map(|r| 1.0 - r.iter().cloned().fold(f32::MIN, f32::max))
        .collect();
    dists.sort_by(|a, b| a.total_cmp(b));
    let ood_threshold = dists[((dists.len() as f64 * 0.98) as usize).min(dists.len() - 1)];
    let centroids = fit::spherical_kmeans(&pool, 32, 25);

    let now = time::OffsetDateTime::now_utc();
    let version = format!(
        "heads-{:04}{:02}{:02}T{:02}{:02}{:02}",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let mut training_data = serde_json::Map::new();
    for f in tasks.files.iter().chain(&outcome_files) {
        let entry = if f.is_dir() {
            let mut h = Sha256::new();
            let mut names: Vec<PathBuf> = std::fs::read_dir(f)?.flatten().map(|e| e.path()).collect();
            names.sort();
            for n in names {
                h.update(std::fs::read(&n)?);
            }
            hex::encode(h.finalize())
        } else {
            data::file_sha256(f)?
        };
        training_data.insert(relative(f), json!(entry));
    }
    let mut heads = Heads {
        manifest: Manifest {
            version,
            created_at: now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            embedding_model: "sentence-transformers/all-MiniLM-L6-v2 (sentence + focus16 features)".into(),
            embedding_dim: FEATURE_DIM,
            taxonomy: Task::ALL.iter().map(|t| t.to_string()).collect(),
            ood_threshold,
            abilities,
            difficulty_offsets: offsets.clone(),
            training_data: json!({
                "files_sha256": training_data,
                "task_prompts": tasks.train.len(),
                "task_prompts_per_class": Task::ALL.iter().map(|t| (t.to_string(), counts[t.index()])).collect::<BTreeMap<_, _>>(),
                "outcome_prompts_train": outcomes.train.len(),
                "outcome_prompts_validation": outcomes.val.len(),
                "anchors": anchors.len(),
            }),
            metrics: json!({}),
        },
        task_w,
        task_b,
        diff_w: irt.w,
        diff_b: irt.b,
        centroids,
        offsets: Task::ALL.iter().map(|t| offsets[t.as_str()]).collect(),
        abilities: Default::default(),
    };
    heads.abilities = std::sync::Arc::new(heads.manifest.abilities.clone());

    // Held-out metrics.
    let report = evaluate_heads(&heads, &encoder, &mut cache, &opts.data, opts.max_tokens)?;
    heads.manifest.metrics = report.to_json();
    println!("{}", report.table());
    if !opts.dry_run {
        let store = HeadsStore::new(&opts.heads_dir);
        let dir = heads.save(&opts.heads_dir)?;
        store.set_current(&heads.manifest.version)?;
        println!("wrote {} and made it current", dir.display());
    } else {
        println!("dry run: nothing written");
    }
    Ok(heads)
}

fn relative(p: &Path) -> String {
    let s = p.display().to_string();
    match s.find("shared/data/") {
        Some(i) => format!("../{}", &s[i..]),
        None => match s.find("training/") {
            Some(i) => s[i..].to_string(),
            None => s,
        },
    }
}

/// Evaluation of a set of heads: task accuracy on the hand-written test set and router metrics
/// on outcome data.
pub struct EvalReport {
    pub task: Option<eval::TaskMetrics>,
    /// (name, metrics) per outcome set, then baselines.
    pub routers: Vec<(String, eval::RouterMetrics)>,
    pub baselines: Vec<(String, eval::RouterMetrics)>,
    pub pooled: Option<eval::RouterMetrics>,
}

impl EvalReport {
    pub fn to_json(&self) -> serde_json::Value {
        let short = |m: &eval::RouterMetrics| json!({"n": m.n, "apgr": m.apgr, "cpt50": m.cpt50, "cpt80": m.cpt80, "ece": m.ece, "weak_accuracy": m.weak_accuracy, "strong_accuracy": m.strong_accuracy});
        let ranking = |m: &eval::RouterMetrics| json!({"n": m.n, "apgr": m.apgr, "cpt50": m.cpt50, "cpt80": m.cpt80});
        let mut v = match &self.pooled {
            Some(p) => short(p),
            None => json!({}),
        };
        v["per_set"] = self
            .routers
            .iter()
            .map(|(n, m)| (n.clone(), short(m)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        v["baselines"] = self
            .baselines
            .iter()
            .map(|(n, m)| (n.clone(), ranking(m)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        if let Some(t) = &self.task {
            v["task_accuracy"] = json!(t.accuracy);
            v["task_test_n"] = json!(t.n);
        }
        v
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        if let Some(t) = &self.task {
            s.push_str(&format!(
                "task type on the hand-written test set: accuracy {:.3} (n={})\n",
                t.accuracy, t.n
            ));
            s.push_str(&eval::format_confusion(t));
            s.push('\n');
        }
        s.push_str(&format!(
            "{:<28} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7}\n",
            "router metrics", "n", "weak", "strong", "APGR", "CPT50", "CPT80", "ECE"
        ));
        let rows = self
            .routers
            .iter()
            .map(|r| (r, true))
            .chain(self.baselines.iter().map(|r| (r, false)));
        for ((name, m), calibrated) in rows {
            let ece = if calibrated { format!("{:.3}", m.ece) } else { "-".into() };
            s.push_str(&format!(
                "{:<28} {:>6} {:>7.3} {:>7.3} {:>7.3} {:>6.1}% {:>6.1}% {:>7}\n",
                name,
                m.n,
                m.weak_accuracy,
                m.strong_accuracy,
                m.apgr,
                m.cpt50 * 100.0,
                m.cpt80 * 100.0,
                ece
            ));
        }
        s
    }
}

/// P(weak model succeeds) for outcome items under `heads`. The weak model's ability comes from the
/// manifest when the heads were fitted on it; otherwise it is set from the file's base rate (the
/// ranking, and so APGR and CPT, does not depend on it).
pub fn p_weak(heads: &Heads, x: &Array2<f32>, items: &[OutcomeItem], weak: &str) -> Vec<f64> {
    let outs: Vec<_> = x.rows().into_iter().map(|r| heads.predict(r.as_slice().unwrap_or(&[]))).collect();
    let tasks: Vec<Task> = items
        .iter()
        .zip(&outs)
        .map(|(i, o)| {
            i.source_task().unwrap_or_else(|| {
                let (k, _) = o
                    .task_probs
                    .iter()
                    .enumerate()
                    .fold((0, f64::MIN), |b, (k, p)| if *p > b.1 { (k, *p) } else { b });
                Task::ALL[k]
            })
        })
        .collect();
    let known = heads.manifest.abilities.get(weak);
    let base_rate = items.iter().filter(|i| i.outcomes.get(weak).copied().unwrap_or(false)).count() as f64 / items.len().max(1) as f64;
    let mean_d = outs.iter().map(|o| o.difficulty).sum::<f64>() / outs.len().max(1) as f64;
    outs.iter()
        .zip(&tasks)
        .map(|(o, t)| {
            let a = known
                .and_then(|k| k.get(t.as_str()).copied())
                .unwrap_or_else(|| logit(base_rate) + mean_d);
            sigmoid(a - o.difficulty)
        })
        .collect()
}

/// Weak and strong model names in an outcome set: the two given, or the least and most accurate.
pub fn weak_strong(items: &[OutcomeItem], weak: Option<&str>, strong: Option<&str>) -> anyhow::Result<(String, String)> {
    let mut acc: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for i in items {
        for (m, c) in &i.outcomes {
            let e = acc.entry(m.clone()).or_default();
            e.0 += *c as usize;
            e.1 += 1;
        }
    }
    if acc.len() < 2 {
        bail!("outcome data needs at least two models per prompt");
    }
    let mut by_acc: Vec<(String, f64)> = acc.iter().map(|(m, (c, n))| (m.clone(), *c as f64 / *n as f64)).collect();
    by_acc.sort_by(|a, b| a.1.total_cmp(&b.1));
    let weak = weak.map(str::to_string).unwrap_or_else(|| by_acc[0].0.clone());
    let strong = strong.map(str::to_string).unwrap_or_else(|| by_acc[by_acc.len() - 1].0.clone());
    for m in [&weak, &strong] {
        if !acc.contains_key(m) {
            bail!(
                "model '{m}' does not appear in the outcome data (models: {})",
                acc.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok((weak, strong))
}

/// Router metrics of `heads` on outcome `items` (embedded as `x`), plus the two baselines.
pub fn outcome_metrics(
    heads: &Heads,
    x: &Array2<f32>,
    items: &[OutcomeItem],
    weak: &str,
    strong: &str,
) -> (eval::RouterMetrics, eval::RouterMetrics, eval::RouterMetrics) {
    let items_ok: Vec<usize> = (0..items.len())
        .filter(|i| items[*i].outcomes.contains_key(weak) && items[*i].outcomes.contains_key(strong))
        .collect();
    let x = rows(x, &items_ok);
    let items: Vec<OutcomeItem> = items_ok.iter().map(|i| items[*i].clone()).collect();
    let w: Vec<bool> = items.iter().map(|i| i.outcomes[weak]).collect();
    let s: Vec<bool> = items.iter().map(|i| i.outcomes[strong]).collect();
    let p = p_weak(heads, &x, &items, weak);
    let router = eval::router_metrics(&p, &w, &s);
    // Baselines: random order (seeded hash) and "longest prompts go to the strong model".
    let random: Vec<f64> = items
        .iter()
        .map(|i| Sha256::digest(i.prompt.as_bytes())[0] as f64 / 255.0)
        .collect();
    let length: Vec<f64> = items.iter().map(|i| -(i.prompt.len() as f64)).collect();
    (router, eval::router_metrics(&random, &w, &s), eval::router_metrics(&length, &w, &s))
}

/// The default evaluation: hand-written task test set + routellm validation splits.
pub fn evaluate_heads(
    heads: &Heads,
    encoder: &Encoder,
    cache: &mut EmbeddingCache,
    paths: &DataPaths,
    max_tokens: usize,
) -> anyhow::Result<EvalReport> {
    let task = {
        let test_dir = paths.training.join("tasks/handwritten/test");
        if test_dir.exists() {
            let tasks = data::load_task_data(
                &DataPaths {
                    shared: PathBuf::from("/nonexistent"),
                    training: paths.training.clone(),
                },
                0,
            )?;
            let texts: Vec<&str> = tasks.test.iter().map(|l| l.prompt.as_str()).collect();
            let x = embed_all(encoder, &texts, cache, max_tokens, "task test prompts")?;
            let predicted: Vec<Task> = x
                .rows()
                .into_iter()
                .map(|r| {
                    let o = heads.predict(r.as_slice().unwrap_or(&[]));
                    let (k, _) = o
                        .task_probs
                        .iter()
                        .enumerate()
                        .fold((0, f64::MIN), |b, (k, p)| if *p > b.1 { (k, *p) } else { b });
                    Task::ALL[k]
                })
                .collect();
            let truth: Vec<Task> = tasks.test.iter().map(|l| l.task).collect();
            Some(eval::task_metrics(&truth, &predicted))
        } else {
            None
        }
    };
    let mut routers = Vec::new();
    let mut baselines = Vec::new();
    let mut pooled_items = Vec::new();
    let mut pooled_x = Vec::new();
    for f in paths.outcome_files() {
        if !f.exists() {
            continue;
        }
        let items: Vec<OutcomeItem> = data::load_outcomes(&f)?
            .into_iter()
            .filter(|i| data::is_validation(&i.prompt))
            .collect();
        let texts: Vec<&str> = items.iter().map(|i| i.prompt.as_str()).collect();
        let name = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let x = embed_all(encoder, &texts, cache, max_tokens, &format!("{name} validation"))?;
        let (weak, strong) = weak_strong(&items, None, None)?;
        let (r, random, length) = outcome_metrics(heads, &x, &items, &weak, &strong);
        routers.push((format!("ladder {name} (validation)"), r));
        baselines.push((format!("random {name}"), random));
        baselines.push((format!("longest-first {name}"), length));
        pooled_x.push(x);
        pooled_items.extend(items);
    }
    let pooled = if pooled_items.is_empty() {
        None
    } else {
        let views: Vec<_> = pooled_x.iter().map(|x| x.view()).collect();
        let x = ndarray::concatenate(ndarray::Axis(0), &views)?;
        let (weak, strong) = weak_strong(&pooled_items, None, None)?;
        let (r, _, _) = outcome_metrics(heads, &x, &pooled_items, &weak, &strong);
        routers.push(("ladder pooled (validation)".into(), r.clone()));
        Some(r)
    };
    Ok(EvalReport {
        task,
        routers,
        baselines,
        pooled,
    })
}

/// Embed an arbitrary outcome file and compute its metrics (for `ladder eval --outcomes`).
pub fn evaluate_file(
    heads: &Heads,
    encoder: &Encoder,
    cache: &mut EmbeddingCache,
    file: &Path,
    weak: Option<&str>,
    strong: Option<&str>,
    max_tokens: usize,
) -> anyhow::Result<EvalReport> {
    let items = data::load_outcomes(file)?;
    if items.is_empty() {
        bail!("{} has no outcome items", file.display());
    }
    let texts: Vec<&str> = items.iter().map(|i| i.prompt.as_str()).collect();
    let x = embed_all(encoder, &texts, cache, max_tokens, "outcome prompts")?;
    let (weak, strong) = weak_strong(&items, weak, strong)?;
    let (r, random, length) = outcome_metrics(heads, &x, &items, &weak, &strong);
    let name = file.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(EvalReport {
        task: None,
        routers: vec![(format!("ladder {name}"), r.clone())],
        baselines: vec![(format!("random {name}"), random), (format!("longest-first {name}"), length)],
        pooled: Some(r),
    })
}

/// Helper for callers that only have a heads directory.
pub fn load_heads(heads_dir: &Path, version: Option<&str>) -> anyhow::Result<Heads> {
    let store = HeadsStore::new(heads_dir);
    match version {
        Some(v) => Heads::load(&heads_dir.join(v)),
        None => store.load_current(),
    }
}
