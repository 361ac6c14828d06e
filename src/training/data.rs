//! Training and evaluation data: where it comes from and how it is split.
//!
//! - Task-labelled prompts: the hand-written sets under `training/tasks/handwritten/{train,test}`
//!   (the test set is never trained on), plus prompts whose source fixes their type, read from
//!   `../shared/data` when present: GSM8K training questions (math), MMLU (knowledge_qa, training
//!   split only), MBPP (code), WinoGrande (reasoning), and HumanEval (code) from
//!   `training/cache/HumanEval.jsonl` (fetched by `scripts/fetch-training-data.sh`).
//! - Outcomes: `routellm-outcomes/{mmlu,gsm8k}.jsonl`, per-prompt correctness of a cheap and a
//!   strong model. Split deterministically by a hash of the prompt: one fifth is validation.

use crate::task::Task;
use anyhow::Context;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A labelled prompt.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub prompt: String,
    pub task: Task,
    pub source: String,
}

/// A prompt with real outcomes of several models.
#[derive(Debug, Clone, Deserialize)]
pub struct OutcomeItem {
    pub prompt: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub subject: Option<String>,
    pub outcomes: BTreeMap<String, bool>,
}

impl OutcomeItem {
    /// The task its source fixes, if any.
    pub fn source_task(&self) -> Option<Task> {
        let s = self.source.to_ascii_lowercase();
        if s.contains("gsm8k") || s.contains("math") {
            Some(Task::Math)
        } else if s.contains("mmlu") || s.contains("arc") {
            Some(Task::KnowledgeQa)
        } else if s.contains("mbpp") || s.contains("humaneval") {
            Some(Task::Code)
        } else if s.contains("winogrande") {
            Some(Task::Reasoning)
        } else {
            None
        }
    }
}

/// Where the inputs live.
#[derive(Debug, Clone)]
pub struct DataPaths {
    /// `../shared/data` (may be absent).
    pub shared: PathBuf,
    /// The project's `training/` folder.
    pub training: PathBuf,
}

impl DataPaths {
    pub fn shared_available(&self) -> bool {
        self.shared.join("routellm-outcomes/mmlu.jsonl").exists()
    }

    pub fn outcome_files(&self) -> Vec<PathBuf> {
        vec![
            self.shared.join("routellm-outcomes/mmlu.jsonl"),
            self.shared.join("routellm-outcomes/gsm8k.jsonl"),
        ]
    }
}

/// sha256 of a file, for manifests.
pub fn file_sha256(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// True for the validation fifth (deterministic in the prompt text).
pub fn is_validation(prompt: &str) -> bool {
    let h = Sha256::digest(prompt.as_bytes());
    h[0] % 5 == 0
}

fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Vec<T>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1)))
        .collect()
}

pub fn load_outcomes(path: &Path) -> anyhow::Result<Vec<OutcomeItem>> {
    read_jsonl(path)
}

#[derive(Deserialize)]
struct HandwrittenLine {
    task: String,
    prompt: String,
}

fn load_handwritten(dir: &Path) -> anyhow::Result<Vec<Labelled>> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    for f in files {
        for line in read_jsonl::<HandwrittenLine>(&f)? {
            let task: Task = line.task.parse().with_context(|| format!("in {}", f.display()))?;
            out.push(Labelled {
                prompt: line.prompt,
                task,
                source: format!("handwritten/{}", task),
            });
        }
    }
    Ok(out)
}

/// Deterministic sample of up to `n` items (by prompt hash order).
fn sample<T: Clone>(items: &[T], n: usize, key: impl Fn(&T) -> &str) -> Vec<T> {
    let mut keyed: Vec<(Vec<u8>, &T)> = items.iter().map(|i| (Sha256::digest(key(i).as_bytes()).to_vec(), i)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.into_iter().take(n).map(|(_, i)| i.clone()).collect()
}

/// The task-labelled training set and the hand-written test set, with the files they came from.
pub struct TaskData {
    pub train: Vec<Labelled>,
    pub test: Vec<Labelled>,
    pub files: Vec<PathBuf>,
}

#[derive(Deserialize, Clone)]
struct PromptOnly {
    prompt: String,
}

pub fn load_task_data(paths: &DataPaths, per_source: usize) -> anyhow::Result<TaskData> {
    let hw = paths.training.join("tasks/handwritten");
    let mut train = load_handwritten(&hw.join("train"))?;
    let test = load_handwritten(&hw.join("test"))?;
    let mut files = vec![hw.join("train"), hw.join("test")];
    let mut add = |path: PathBuf, task: Task, source: &str, n: usize, only_train_split: bool| -> anyhow::Result<()> {
        if !path.exists() {
            tracing::warn!("{} not found: training without it", path.display());
            return Ok(());
        }
        let items: Vec<PromptOnly> = read_jsonl(&path)?;
        let items: Vec<PromptOnly> = items
            .into_iter()
            .filter(|i| !only_train_split || !is_validation(&i.prompt))
            .collect();
        for i in sample(&items, n, |i| i.prompt.as_str()) {
            train.push(Labelled {
                prompt: i.prompt,
                task,
                source: source.into(),
            });
        }
        files.push(path);
        Ok(())
    };
    let shared = &paths.shared;
    add(
        shared.join("routellm-outcomes/gsm8k_train_questions.jsonl"),
        Task::Math,
        "gsm8k_train",
        per_source,
        false,
    )?;
    add(
        shared.join("routellm-outcomes/mmlu.jsonl"),
        Task::KnowledgeQa,
        "mmlu",
        per_source,
        true,
    )?;
    add(shared.join("routerbench-zs/mbpp.jsonl"), Task::Code, "mbpp", per_source / 2, false)?;
    add(
        shared.join("routerbench-zs/winograde.jsonl"),
        Task::Reasoning,
        "winogrande",
        per_source / 3,
        false,
    )?;
    add(
        paths.training.join("cache/HumanEval.jsonl"),
        Task::Code,
        "humaneval",
        per_source,
        false,
    )?;
    Ok(TaskData { train, test, files })
}
