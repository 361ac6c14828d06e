//! The sentence encoder: all-MiniLM-L6-v2 through candle-transformers' BERT and the `tokenizers`
//! crate, producing the same embeddings as sentence-transformers (attention-masked mean pooling of
//! the last hidden state, then L2 normalisation).
//!
//! Two ways to turn text into token ids:
//! - [`Encoder::tokenize_text`]: one text, cut to the window from the head, exactly as
//!   sentence-transformers does (used by the parity test and for plain texts);
//! - [`Encoder::tokenize_prompt`]: Ladder's routing rule for chat prompts. The window (256 tokens,
//!   with `[CLS]` and `[SEP]`) is shared between the system prompt and the last user turn: the system
//!   prompt keeps at most a quarter of it (its head); the user turn gets the rest, and when it does
//!   not fit, its head (two thirds of its share) and its tail (one third) are kept, since requests
//!   usually state the task at the start or the end. The result says whether anything was cut.
//!
//! [`Encoder::features`] returns the routing features the heads read: the sentence embedding and
//! a "focus" embedding of the first tokens of the user turn, from one forward pass.

use super::fused::Precision;
use anyhow::{Context, anyhow};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use std::path::Path;
use tokenizers::Tokenizer;

pub const EMBEDDING_DIM: usize = 384;

/// Routing features: the sentence embedding followed by the "focus" embedding (the mean of the
/// first [`FOCUS_TOKENS`] contextual token vectors of the user turn, where requests usually say
/// what they want), each L2-normalised. The focus half comes from the same forward pass, so it
/// costs no extra encoder time; on the hand-written task test set it lifts task-type accuracy from
/// 0.75 to 0.83 (measured with a linear head, see training/README.md).
pub const FEATURE_DIM: usize = 2 * EMBEDDING_DIM;
pub const FOCUS_TOKENS: usize = 16;

pub struct Encoder {
    model: Model,
    tokenizer: Tokenizer,
    device: Device,
    cls: u32,
    sep: u32,
    max_tokens: usize,
}

/// The forward pass: Ladder's fused implementation ([`super::fused`], about 1.7x faster on CPU,
/// same embeddings to a cosine of 0.9999998), or candle-transformers' `BertModel` for a model the
/// fused pass does not support, or when `LADDER_ENCODER=candle` is set (a reference to compare with).
enum Model {
    Fused(super::fused::FusedBert),
    Candle(BertModel),
}

/// Token ids ready for the model (special tokens included) and whether the text was cut.
#[derive(Debug, Clone)]
pub struct Tokenized {
    pub ids: Vec<u32>,
    pub truncated: bool,
    /// Token positions `[start, end)` of the focus span (start of the user turn).
    pub focus: (usize, usize),
}

impl Encoder {
    /// Load config.json, model.safetensors and tokenizer.json from `dir`, with the f32 forward pass
    /// (the reference precision).
    pub fn load(dir: &Path, max_tokens: usize) -> anyhow::Result<Encoder> {
        Self::load_with(dir, max_tokens, Precision::F32)
    }

    /// [`Encoder::load`] with the linear layers in `precision` (`[classifier] precision`).
    pub fn load_with(dir: &Path, max_tokens: usize, precision: Precision) -> anyhow::Result<Encoder> {
        let candle = std::env::var("LADDER_ENCODER").as_deref() == Ok("candle");
        let precision = match precision {
            Precision::Auto if candle => Precision::F32, // the reference, as asked
            p => p.resolve(),
        };
        let hint = "run scripts/fetch-model.sh to install the encoder weights";
        let config: BertConfig = serde_json::from_str(
            &std::fs::read_to_string(dir.join("config.json")).with_context(|| format!("reading {}/config.json ({hint})", dir.display()))?,
        )
        .context("parsing the encoder config.json")?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow!("loading {}/tokenizer.json: {e} ({hint})", dir.display()))?;
        // The shipped tokenizer.json pads and truncates to 128; Ladder manages both itself.
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).map_err(|e| anyhow!("disabling truncation: {e}"))?;
        let cls = tokenizer.token_to_id("[CLS]").ok_or_else(|| anyhow!("tokenizer has no [CLS]"))?;
        let sep = tokenizer.token_to_id("[SEP]").ok_or_else(|| anyhow!("tokenizer has no [SEP]"))?;
        let device = Device::Cpu;
        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            anyhow::bail!("{} is missing ({hint})", weights.display());
        }
        let fused = match candle {
            true if precision == Precision::F32 => None,
            true => anyhow::bail!("precision {precision} needs the fused encoder (unset LADDER_ENCODER=candle)"),
            false => match super::fused::FusedBert::load_with(dir, precision) {
                Ok(m) => Some(m),
                Err(e) if precision == Precision::F32 => {
                    tracing::warn!(error = %e, "fused encoder unavailable; using candle-transformers' BertModel");
                    None
                }
                // candle's BertModel is f32 only: a reduced precision needs the fused pass.
                Err(e) => return Err(e.context(format!("loading the {precision} encoder"))),
            },
        };
        let model = match fused {
            Some(m) => Model::Fused(m),
            None => {
                // SAFETY: the weights file is memory-mapped read-only and not modified while mapped.
                let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &device)? };
                Model::Candle(BertModel::load(vb, &config).context("loading BERT weights")?)
            }
        };
        Ok(Encoder {
            model,
            tokenizer,
            device,
            cls,
            sep,
            max_tokens: max_tokens.clamp(8, 512),
        })
    }

    fn ids(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizing: {e}"))?
            .get_ids()
            .to_vec())
    }

    fn wrap(&self, body: impl IntoIterator<Item = u32>) -> Vec<u32> {
        let mut ids = Vec::with_capacity(self.max_tokens);
        ids.push(self.cls);
        ids.extend(body);
        ids.push(self.sep);
        ids
    }

    /// One text, head-truncated like sentence-transformers.
    pub fn tokenize_text(&self, text: &str) -> anyhow::Result<Tokenized> {
        let ids = self.ids(text)?;
        let budget = self.max_tokens - 2;
        let truncated = ids.len() > budget;
        let ids = self.wrap(ids.into_iter().take(budget));
        let focus = (0, ids.len().min(FOCUS_TOKENS));
        Ok(Tokenized { ids, truncated, focus })
    }

    /// A chat prompt (system prompt + last user turn) under Ladder's truncation rule.
    pub fn tokenize_prompt(&self, system: &str, user: &str) -> anyhow::Result<Tokenized> {
        if system.trim().is_empty() {
            return self.tokenize_head_tail(user);
        }
        let sys = self.ids(system)?;
        let usr = self.ids(user)?;
        let budget = self.max_tokens - 3; // [CLS] system [SEP] user [SEP]
        let sys_keep = sys.len().min(budget / 4).min(budget.saturating_sub(usr.len()).max(budget / 4));
        let user_budget = budget - sys_keep;
        let (user_ids, user_cut) = head_tail(&usr, user_budget);
        let mut ids = Vec::with_capacity(self.max_tokens);
        ids.push(self.cls);
        ids.extend_from_slice(&sys[..sys_keep]);
        ids.push(self.sep);
        let user_start = ids.len();
        ids.extend(user_ids);
        ids.push(self.sep);
        let focus = (user_start, ids.len().min(user_start + FOCUS_TOKENS));
        Ok(Tokenized {
            ids,
            truncated: user_cut || sys_keep < sys.len(),
            focus,
        })
    }

    fn tokenize_head_tail(&self, text: &str) -> anyhow::Result<Tokenized> {
        let ids = self.ids(text)?;
        let (kept, truncated) = head_tail(&ids, self.max_tokens - 2);
        let ids = self.wrap(kept);
        let focus = (0, ids.len().min(FOCUS_TOKENS));
        Ok(Tokenized { ids, truncated, focus })
    }

    /// Embed a batch of tokenized inputs: one L2-normalised vector each.
    pub fn embed(&self, batch: &[&[u32]]) -> anyhow::Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (hidden, l) = self.forward(batch)?;
        let h = hidden.len() / (batch.len() * l);
        Ok(batch
            .iter()
            .enumerate()
            .map(|(i, ids)| mean_pool(&hidden, h, i, l, 0..ids.len()))
            .collect())
    }

    /// Routing features ([`FEATURE_DIM`] floats) for a batch of tokenized prompts.
    pub fn features(&self, batch: &[&Tokenized]) -> anyhow::Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&[u32]> = batch.iter().map(|t| t.ids.as_slice()).collect();
        let (hidden, l) = self.forward(&ids)?;
        let h = hidden.len() / (batch.len() * l);
        Ok(batch
            .iter()
            .enumerate()
            .map(|(i, t)| {
                // The sentence embedding, then the mean of the focus span (the user turn's
                // first tokens).
                let mut features = mean_pool(&hidden, h, i, l, 0..t.ids.len());
                features.extend(mean_pool(&hidden, h, i, l, t.focus.0..t.focus.1.min(t.ids.len())));
                features
            })
            .collect())
    }

    /// Last hidden states `(n, l, 384)` of a batch padded to its longest sequence (`l`),
    /// row-major; padding rows are not to be read.
    fn forward(&self, batch: &[&[u32]]) -> anyhow::Result<(Vec<f32>, usize)> {
        let l = batch.iter().map(|ids| ids.len()).max().unwrap_or(0);
        match &self.model {
            Model::Fused(m) => m.forward_flat(batch),
            Model::Candle(m) => {
                let n = batch.len();
                let mut ids = Vec::with_capacity(n * l);
                let mut mask = Vec::with_capacity(n * l);
                for seq in batch {
                    ids.extend_from_slice(seq);
                    ids.extend(std::iter::repeat_n(0u32, l - seq.len()));
                    mask.extend(std::iter::repeat_n(1u32, seq.len()));
                    mask.extend(std::iter::repeat_n(0u32, l - seq.len()));
                }
                let attention = Tensor::from_vec(mask, (n, l), &self.device)?;
                let input_ids = Tensor::from_vec(ids, (n, l), &self.device)?;
                let token_types = input_ids.zeros_like()?;
                let hidden = m.forward(&input_ids, &token_types, Some(&attention))?;
                Ok((hidden.flatten_all()?.to_vec1::<f32>()?, l))
            }
        }
    }

    /// Convenience: embed plain texts (head truncation).
    pub fn embed_texts(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        let toks: Vec<Tokenized> = texts.iter().map(|t| self.tokenize_text(t)).collect::<anyhow::Result<_>>()?;
        let refs: Vec<&[u32]> = toks.iter().map(|t| t.ids.as_slice()).collect();
        self.embed(&refs)
    }

    /// What runs the forward pass: `"f32"`, `"int8 (avx512-vnni)"` (the int8 kernel in use),
    /// or `"f32 (candle BertModel)"`.
    pub fn describe(&self) -> String {
        match &self.model {
            Model::Fused(m) if m.precision() == Precision::Int8 => format!("int8 ({})", super::qgemm::kernel_name()),
            Model::Fused(m) => m.precision().to_string(),
            Model::Candle(_) => "f32 (candle BertModel)".into(),
        }
    }

    pub fn precision(&self) -> Precision {
        match &self.model {
            Model::Fused(m) => m.precision(),
            Model::Candle(_) => Precision::F32,
        }
    }

    /// Number of tokens of a text without special tokens or truncation.
    pub fn count_tokens(&self, text: &str) -> anyhow::Result<usize> {
        Ok(self.ids(text)?.len())
    }
}

/// Mean of sequence `i`'s hidden states over `span` (rows of `h`, sequences `l` rows apart),
/// then L2 normalisation (sentence-transformers' pooling); an empty span gives zeros.
fn mean_pool(hidden: &[f32], h: usize, i: usize, l: usize, span: std::ops::Range<usize>) -> Vec<f32> {
    let mut sum = vec![0f32; h];
    let count = span.len();
    for row in hidden[(i * l + span.start) * h..(i * l + span.end) * h].chunks_exact(h) {
        for (s, x) in sum.iter_mut().zip(row) {
            *s += *x;
        }
    }
    if count == 0 {
        return sum;
    }
    let inv = 1.0 / count as f32;
    let norm = sum.iter().map(|s| (s * inv) * (s * inv)).sum::<f32>().sqrt().max(1e-12);
    sum.iter().map(|s| s * inv / norm).collect()
}

/// Keep `ids` whole if they fit in `budget`, else their head (2/3) and tail (1/3).
fn head_tail(ids: &[u32], budget: usize) -> (Vec<u32>, bool) {
    if ids.len() <= budget {
        return (ids.to_vec(), false);
    }
    let head = budget * 2 / 3;
    let tail = budget - head;
    let mut out = Vec::with_capacity(budget);
    out.extend_from_slice(&ids[..head]);
    out.extend_from_slice(&ids[ids.len() - tail..]);
    (out, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_tail_keeps_both_ends() {
        let ids: Vec<u32> = (0..100).collect();
        let (kept, cut) = head_tail(&ids, 30);
        assert!(cut);
        assert_eq!(kept.len(), 30);
        assert_eq!(&kept[..20], &ids[..20]);
        assert_eq!(&kept[20..], &ids[90..]);
        let (kept, cut) = head_tail(&ids[..10], 30);
        assert!(!cut);
        assert_eq!(kept.len(), 10);
    }
}
