//! A fused CPU forward pass for BERT encoders like all-MiniLM-L6-v2, written to remove what
//! the profile of candle-transformers' `BertModel` shows besides the matrix products: scalar
//! `erff`/`expf` in GELU and softmax, one full pass over memory per elementwise op (bias, scale,
//! mask, residual, layer norm are separate tensor ops there), the three Q/K/V products, and fresh
//! allocations per op.
//!
//! Here the linear layers go through Candle (`Tensor::matmul`, i.e. the `gemm` crate) in f32, or
//! through [`super::qgemm`] in int8 ([`Precision`]), with Q, K and V fused into one product (the
//! 1/sqrt(d) scale folded into the query weights). The batch is packed: only real tokens go
//! through the linear layers, and attention runs per sequence over its own tokens (no padding, no
//! mask) in its own kernel (bias + head split gathered in one pass, register-blocked q·kᵀ,
//! softmax, p·v). Everything between two products is a single pass over the data: bias +
//! residual + layer norm, bias + GELU. GELU's erf and softmax's exp are branch-free polynomial
//! approximations (max error ~1e-7, checked against libm in the tests) that the compiler
//! vectorizes, with an AVX2+FMA build of the loops chosen at run time.
//!
//! Output: the last hidden state `(n, len, hidden)`, as `BertModel::forward` returns it; the
//! sentence embeddings agree with that path to a cosine of 0.9999998 (`benches/classifier.rs`
//! checks it on every run, `tests/classifier.rs` checks the result against sentence-transformers).
//! Timings (f32 and int8): `benches/RESULTS.md`.

use super::qgemm::QLinear;
use anyhow::{Context, anyhow, bail};
use candle_core::{Device, Storage, Tensor};
use std::path::Path;

pub struct FusedBert {
    hidden: usize,
    heads: usize,
    head_dim: usize,
    inter: usize,
    eps: f32,
    vocab: usize,
    max_pos: usize,
    word: Vec<f32>,
    pos: Vec<f32>,
    type0: Vec<f32>,
    emb_ln: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
    precision: Precision,
    device: Device,
}

struct Layer {
    /// `(hidden, 3 * hidden)`: [Wq / sqrt(d) | Wk | Wv], transposed.
    wqkv: Linear,
    bqkv: Vec<f32>,
    wo: Linear,
    bo: Vec<f32>,
    ln1: (Vec<f32>, Vec<f32>),
    w1: Linear,
    b1: Vec<f32>,
    w2: Linear,
    b2: Vec<f32>,
    ln2: (Vec<f32>, Vec<f32>),
}

/// Numeric precision of the linear layers (Q/K/V, attention output, both FFN matrices); layer
/// norm, softmax, GELU, residuals and the attention products stay f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// int8 where the CPU has AVX-512 VNNI (where it pays), else f32.
    #[default]
    Auto,
    /// f32 weights and activations (Candle's matmul): the reference.
    F32,
    /// int8 weights (per output channel) and activations (per token, dynamic), i32 accumulation:
    /// [`super::qgemm`]. Without VNNI a portable kernel runs it (same results, slower than f32).
    Int8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }

    /// `Auto` decided for this CPU; `F32` and `Int8` as they are.
    pub fn resolve(self) -> Precision {
        match self {
            Precision::Auto if super::qgemm::vnni_available() => Precision::Int8,
            Precision::Auto => Precision::F32,
            p => p,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Precision> {
        match s {
            "auto" => Ok(Precision::Auto),
            "f32" => Ok(Precision::F32),
            "int8" => Ok(Precision::Int8),
            other => bail!("unknown precision '{other}' (auto, f32 or int8)"),
        }
    }
}

/// A linear layer's weight, `(in, out)`.
enum Linear {
    F32(Tensor),
    Int8(QLinear),
}

impl Linear {
    fn new(w: Vec<f32>, inp: usize, out: usize, precision: Precision, device: &Device) -> anyhow::Result<Linear> {
        Ok(match precision {
            Precision::Int8 => Linear::Int8(QLinear::new(&w, inp, out)),
            _ => Linear::F32(Tensor::from_vec(w, (inp, out), device)?),
        })
    }

    /// `out = x · W` for `m` rows of `x`.
    fn forward_into(&self, x: &[f32], m: usize, out: &mut [f32], device: &Device) -> anyhow::Result<()> {
        match self {
            Linear::F32(w) => {
                let inp = w.dims2()?.0;
                let y = Tensor::from_slice(x, (m, inp), device)?.matmul(w)?;
                with_f32(&y, |s| out.copy_from_slice(s))
            }
            Linear::Int8(q) => {
                q.forward_into(x, m, out);
                Ok(())
            }
        }
    }
}

struct Weights<'a>(safetensors::SafeTensors<'a>);

impl Weights<'_> {
    fn get(&self, name: &str) -> anyhow::Result<(Vec<f32>, Vec<usize>)> {
        let t = self.0.tensor(name).with_context(|| format!("weight {name} missing"))?;
        if t.dtype() != safetensors::Dtype::F32 {
            bail!("weight {name} is {:?}, expected F32", t.dtype());
        }
        let data = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok((data, t.shape().to_vec()))
    }

    fn vec(&self, name: &str, len: usize) -> anyhow::Result<Vec<f32>> {
        let (v, shape) = self.get(name)?;
        if shape != [len] {
            bail!("weight {name} has shape {shape:?}, expected [{len}]");
        }
        Ok(v)
    }

    /// A PyTorch `Linear` weight `(out, in)`, returned transposed as `(in, out)` row-major.
    fn linear_t(&self, name: &str, out: usize, inp: usize) -> anyhow::Result<Vec<f32>> {
        let (w, shape) = self.get(name)?;
        if shape != [out, inp] {
            bail!("weight {name} has shape {shape:?}, expected [{out}, {inp}]");
        }
        let mut t = vec![0f32; out * inp];
        for o in 0..out {
            for i in 0..inp {
                t[i * out + o] = w[o * inp + i];
            }
        }
        Ok(t)
    }
}

/// Run `f` on the contiguous f32 data of a CPU tensor, without copying it.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> anyhow::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { bail!("not a CPU tensor") };
    let all = cpu.as_slice::<f32>()?;
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| anyhow!("tensor is not contiguous"))?;
    Ok(f(&all[start..end]))
}

impl FusedBert {
    /// Load `config.json` and `model.safetensors` from a sentence-transformers BERT directory (f32).
    pub fn load(dir: &Path) -> anyhow::Result<FusedBert> {
        Self::load_with(dir, Precision::F32)
    }

    /// [`FusedBert::load`], with the linear layers in `precision` (int8 quantizes them here, once).
    pub fn load_with(dir: &Path, precision: Precision) -> anyhow::Result<FusedBert> {
        let precision = precision.resolve();
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
        let num = |k: &str| {
            cfg[k]
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| anyhow!("config.json: {k} missing"))
        };
        let (hidden, heads, inter, n_layers) = (
            num("hidden_size")?,
            num("num_attention_heads")?,
            num("intermediate_size")?,
            num("num_hidden_layers")?,
        );
        let (vocab, max_pos) = (num("vocab_size")?, num("max_position_embeddings")?);
        let eps = cfg["layer_norm_eps"].as_f64().unwrap_or(1e-12) as f32;
        if cfg["hidden_act"].as_str() != Some("gelu") {
            bail!("config.json: hidden_act {} is not supported (only gelu)", cfg["hidden_act"]);
        }
        if hidden % heads != 0 {
            bail!("config.json: hidden_size {hidden} is not a multiple of num_attention_heads {heads}");
        }
        let head_dim = hidden / heads;
        let bytes = std::fs::read(dir.join("model.safetensors")).context("reading model.safetensors")?;
        let w = Weights(safetensors::SafeTensors::deserialize(&bytes)?);
        let device = Device::Cpu;
        let (word, ws) = w.get("embeddings.word_embeddings.weight")?;
        let (pos, ps) = w.get("embeddings.position_embeddings.weight")?;
        let (types, ts) = w.get("embeddings.token_type_embeddings.weight")?;
        if ws != [vocab, hidden] || ps != [max_pos, hidden] || ts.get(1) != Some(&hidden) {
            bail!("embedding shapes {ws:?} {ps:?} {ts:?} do not match config.json");
        }
        let type0 = types[..hidden].to_vec();
        let emb_ln = (
            w.vec("embeddings.LayerNorm.weight", hidden)?,
            w.vec("embeddings.LayerNorm.bias", hidden)?,
        );
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut layers = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            let p = |s: &str| format!("encoder.layer.{i}.{s}");
            let wq = w.linear_t(&p("attention.self.query.weight"), hidden, hidden)?;
            let wk = w.linear_t(&p("attention.self.key.weight"), hidden, hidden)?;
            let wv = w.linear_t(&p("attention.self.value.weight"), hidden, hidden)?;
            let mut wqkv = vec![0f32; hidden * 3 * hidden];
            for r in 0..hidden {
                let row = &mut wqkv[r * 3 * hidden..(r + 1) * 3 * hidden];
                for c in 0..hidden {
                    row[c] = wq[r * hidden + c] * scale;
                    row[hidden + c] = wk[r * hidden + c];
                    row[2 * hidden + c] = wv[r * hidden + c];
                }
            }
            let mut bqkv: Vec<f32> = w.vec(&p("attention.self.query.bias"), hidden)?.iter().map(|b| b * scale).collect();
            bqkv.extend(w.vec(&p("attention.self.key.bias"), hidden)?);
            bqkv.extend(w.vec(&p("attention.self.value.bias"), hidden)?);
            let lin = |w: Vec<f32>, inp: usize, out: usize| Linear::new(w, inp, out, precision, &device);
            layers.push(Layer {
                wqkv: lin(wqkv, hidden, 3 * hidden)?,
                bqkv,
                wo: lin(w.linear_t(&p("attention.output.dense.weight"), hidden, hidden)?, hidden, hidden)?,
                bo: w.vec(&p("attention.output.dense.bias"), hidden)?,
                ln1: (
                    w.vec(&p("attention.output.LayerNorm.weight"), hidden)?,
                    w.vec(&p("attention.output.LayerNorm.bias"), hidden)?,
                ),
                w1: lin(w.linear_t(&p("intermediate.dense.weight"), inter, hidden)?, hidden, inter)?,
                b1: w.vec(&p("intermediate.dense.bias"), inter)?,
                w2: lin(w.linear_t(&p("output.dense.weight"), hidden, inter)?, inter, hidden)?,
                b2: w.vec(&p("output.dense.bias"), hidden)?,
                ln2: (
                    w.vec(&p("output.LayerNorm.weight"), hidden)?,
                    w.vec(&p("output.LayerNorm.bias"), hidden)?,
                ),
            });
        }
        Ok(FusedBert {
            hidden,
            heads,
            head_dim,
            inter,
            eps,
            vocab,
            max_pos,
            word,
            pos,
            type0,
            emb_ln,
            layers,
            precision,
            device,
        })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Last hidden states `(n, len, hidden)` of a batch of token id sequences, padded to the
    /// longest; the padding positions hold zeros.
    ///
    /// The sequences are packed (no padding rows): the linear layers, layer norms and GELU see
    /// only real tokens, and attention runs per sequence over its own tokens, so a short prompt
    /// batched with a long one costs what it costs alone and nothing needs masking.
    pub fn forward(&self, batch: &[&[u32]]) -> anyhow::Result<Tensor> {
        let (out, l) = self.forward_flat(batch)?;
        Ok(Tensor::from_vec(out, (batch.len(), l, self.hidden), &self.device)?)
    }

    /// [`FusedBert::forward`] as a flat row-major buffer, with the padded length `l`.
    pub fn forward_flat(&self, batch: &[&[u32]]) -> anyhow::Result<(Vec<f32>, usize)> {
        let h = self.hidden;
        let n = batch.len();
        let l = batch.iter().map(|s| s.len()).max().unwrap_or(0);
        if n == 0 || l == 0 {
            bail!("empty batch");
        }
        if l > self.max_pos {
            bail!("sequence of {l} tokens is longer than the model's {} positions", self.max_pos);
        }
        for seq in batch {
            if let Some(&id) = seq.iter().find(|&&id| id as usize >= self.vocab) {
                bail!("token id {id} is outside the vocabulary");
            }
        }
        let mut out = vec![0f32; n * l * h];
        // Sequences go through the layers in groups of at most ROWS_PER_PASS tokens (a longer
        // sequence alone): the activations of a group stay in cache, the buffers are reused
        // from one group and one call to the next, and batching more rows than that gains
        // nothing (the weight panels are already reused over ROWS_PER_PASS rows).
        SCRATCH.with(|cell| {
            let mut fresh = Scratch::default();
            // Re-entrant use on one thread (a rayon worker that steals another forward pass
            // while it waits) gets its own buffers.
            let mut held = cell.try_borrow_mut();
            let scratch = match held.as_deref_mut() {
                Ok(s) => s,
                Err(_) => &mut fresh,
            };
            let mut g0 = 0;
            while g0 < n {
                let mut rows = batch[g0].len();
                let mut g1 = g0 + 1;
                while g1 < n && rows + batch[g1].len() <= ROWS_PER_PASS {
                    rows += batch[g1].len();
                    g1 += 1;
                }
                self.forward_group(&batch[g0..g1], scratch, &mut out[g0 * l * h..g1 * l * h], l)?;
                g0 = g1;
            }
            anyhow::Ok(())
        })?;
        Ok((out, l))
    }

    /// One group of sequences through the embeddings and every layer; sequence `b`'s last hidden
    /// states go to `out[b * l * h..]` (rows past its length are left as they are).
    fn forward_group(&self, batch: &[&[u32]], scratch: &mut Scratch, out: &mut [f32], l: usize) -> anyhow::Result<()> {
        let h = self.hidden;
        let n = batch.len();
        let starts = &mut scratch.starts;
        starts.clear();
        starts.push(0);
        for s in batch {
            starts.push(starts.last().copied().unwrap_or(0) + s.len());
        }
        let m = starts[n];
        let k = kernels();
        // Every buffer is overwritten before it is read, so they only grow, never get cleared.
        let grow = |v: &mut Vec<f32>, len: usize| {
            if v.len() < len {
                v.resize(len, 0.0);
            }
        };
        grow(&mut scratch.x, m * h);
        grow(&mut scratch.qkv, m * 3 * h);
        grow(&mut scratch.ctx, m * h);
        grow(&mut scratch.x1, m * h);
        grow(&mut scratch.act, m * self.inter);
        let Scratch {
            starts,
            x,
            qkv,
            ctx,
            x1,
            act,
            attention,
        } = scratch;
        let (x, qkv, ctx) = (&mut x[..m * h], &mut qkv[..m * 3 * h], &mut ctx[..m * h]);
        let (x1, act) = (&mut x1[..m * h], &mut act[..m * self.inter]);

        // Embeddings + layer norm.
        for (b, seq) in batch.iter().enumerate() {
            for (p, &id) in seq.iter().enumerate() {
                let id = id as usize;
                let row = &mut x[(starts[b] + p) * h..(starts[b] + p + 1) * h];
                let (wr, pr) = (&self.word[id * h..(id + 1) * h], &self.pos[p * h..(p + 1) * h]);
                for c in 0..h {
                    row[c] = wr[c] + pr[c] + self.type0[c];
                }
            }
        }
        (k.add_ln)(x, None, None, &self.emb_ln.0, &self.emb_ln.1, self.eps, h);

        let dev = &self.device;
        for layer in &self.layers {
            layer.wqkv.forward_into(x, m, qkv, dev)?;
            self.attention(qkv, &layer.bqkv, starts, ctx, attention);
            // x1 = LN(attn + bo + x)
            layer.wo.forward_into(ctx, m, x1, dev)?;
            (k.add_ln)(x1, Some(&layer.bo), Some(x), &layer.ln1.0, &layer.ln1.1, self.eps, h);
            layer.w1.forward_into(x1, m, act, dev)?;
            (k.bias_gelu)(act, &layer.b1, self.inter);
            // x = LN(ffn + b2 + x1)
            layer.w2.forward_into(act, m, x, dev)?;
            (k.add_ln)(x, Some(&layer.b2), Some(x1), &layer.ln2.0, &layer.ln2.1, self.eps, h);
        }
        for b in 0..n {
            out[b * l * h..(b * l + batch[b].len()) * h].copy_from_slice(&x[starts[b] * h..starts[b + 1] * h]);
        }
        Ok(())
    }

    /// Multi-head self-attention of every sequence (rows `starts[b]..starts[b + 1]` of `qkv`,
    /// `(m, 3h)` before the bias `bqkv`) into `ctx` `(m, h)`, heads merged. One task per sequence
    /// (all heads: its rows are read once, in order), or per (sequence, half of the heads) when
    /// there are fewer sequences than threads; tasks spread over the rayon pool when there is
    /// enough work.
    fn attention(&self, qkv: &[f32], bqkv: &[f32], starts: &[usize], ctx: &mut [f32], scratch: &mut Vec<f32>) {
        let (h, nh, d) = (self.hidden, self.heads, self.head_dim);
        let k = kernels();
        let n = starts.len() - 1;
        let flops: usize = starts.windows(2).map(|w| (w[1] - w[0]).pow(2)).sum::<usize>() * 4 * h;
        let threads = if flops >= ATTENTION_PARALLEL_FLOPS {
            rayon::current_num_threads()
        } else {
            1
        };
        if threads <= 1 {
            // One sequence after another, all heads: a sequence's output rows are its rows of
            // `ctx` (every head, in order), so the kernel writes them in place.
            for b in 0..n {
                let (s, e) = (starts[b], starts[b + 1]);
                (k.attention)(
                    &qkv[s * 3 * h..e * 3 * h],
                    e - s,
                    h,
                    d,
                    0..nh,
                    bqkv,
                    &mut ctx[s * h..e * h],
                    scratch,
                );
            }
            return;
        }
        let splits = if n >= threads { 1 } else { threads.div_ceil(n).min(nh) };
        let per = nh.div_ceil(splits);
        let tasks: Vec<(usize, std::ops::Range<usize>)> = (0..n)
            .flat_map(|b| (0..splits).map(move |t| (b, t * per..((t + 1) * per).min(nh))))
            .filter(|(_, r)| !r.is_empty())
            .collect();
        // A task's heads are a column band of its sequence's rows: computed apart, then placed.
        use rayon::prelude::*;
        let results: Vec<Vec<f32>> = tasks
            .par_iter()
            .map_init(Vec::new, |work, (b, heads)| {
                let (s, e) = (starts[*b], starts[b + 1]);
                let mut out = vec![0f32; (e - s) * heads.len() * d];
                (k.attention)(&qkv[s * 3 * h..e * 3 * h], e - s, h, d, heads.clone(), bqkv, &mut out, work);
                out
            })
            .collect();
        for ((b, heads), part) in tasks.iter().zip(results) {
            let w = heads.len() * d;
            for (i, row) in part.chunks_exact(w).enumerate() {
                let dst = (starts[*b] + i) * h + heads.start * d;
                ctx[dst..dst + w].copy_from_slice(row);
            }
        }
    }
}

/// Tokens that one pass through the layers takes at most (see [`FusedBert::forward`]).
const ROWS_PER_PASS: usize = 256;

/// Buffers of the forward pass, kept per thread between calls (a few MB: ROWS_PER_PASS rows,
/// or one longer sequence).
#[derive(Default)]
struct Scratch {
    starts: Vec<usize>,
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    x1: Vec<f32>,
    act: Vec<f32>,
    /// The attention kernel's gather buffer (kᵀ, scores).
    attention: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The head size the attention kernel's `p · v` keeps in registers (MiniLM's; others take the
/// general loop).
const PV_D: usize = 32;

/// Attention work (FLOPs) above which the heads are spread over threads.
const ATTENTION_PARALLEL_FLOPS: usize = 1 << 22;

// ------------------------------------------------------------------------------------------------
// Elementwise kernels. Written as plain loops over f32 so that LLVM vectorizes them; compiled
// twice (baseline x86-64 and AVX2+FMA) and picked once at run time.

type AddLn = fn(&mut [f32], Option<&[f32]>, Option<&[f32]>, &[f32], &[f32], f32, usize);
/// (qkv rows of one sequence, len, hidden, head_dim, heads, bqkv, out (len × heads · head_dim),
/// scratch)
type Attention = fn(&[f32], usize, usize, usize, std::ops::Range<usize>, &[f32], &mut [f32], &mut Vec<f32>);

struct Kernels {
    bias_gelu: fn(&mut [f32], &[f32], usize),
    add_ln: AddLn,
    attention: Attention,
}

fn kernels() -> &'static Kernels {
    static K: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Kernels {
                bias_gelu: |x, b, w| unsafe { avx2::bias_gelu(x, b, w) },
                add_ln: |x, b, r, g, be, e, w| unsafe { avx2::add_ln(x, b, r, g, be, e, w) },
                attention: |q, l, h, d, hd, b, o, s| unsafe { avx2::attention(q, l, h, d, hd, b, o, s) },
            };
        }
        Kernels {
            bias_gelu: generic::bias_gelu,
            add_ln: generic::add_ln,
            attention: generic::attention,
        }
    })
}

/// erf(x), rational approximation on [-4, 4] (the one Eigen and XLA use for f32); |error| < 2e-7.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906e-4;
    p = x2 * p + -2.954_600_1e-3;
    p = x2 * p + -1.609_603_3e-2;
    p *= x;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_474e-2;
    p / q
}

/// e^x for x <= 88 (results below ~1e-38 flush to 0): 2^n · P(r), |relative error| < 2e-7.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = if x < -87.0 { -87.0 } else { x };
    // n = round(x / ln 2) with the 1.5 · 2^23 trick (no SSE4.1 round needed).
    let t = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let mut p = r * (1.0 / 720.0) + 1.0 / 120.0;
    p = r * p + 1.0 / 24.0;
    p = r * p + 1.0 / 6.0;
    p = r * p + 0.5;
    p = r * p + 1.0;
    p = r * p + 1.0;
    // SAFETY: |n| <= 126 after the clamp, so the cast is exact.
    let e = unsafe { n.to_int_unchecked::<i32>() };
    p * f32::from_bits(((e + 127) as u32) << 23)
}

macro_rules! kernels_impl {
    () => {
        /// Softmax over `row[..valid]`; `row[valid..]` (padding) gets probability 0.
        #[inline(always)]
        pub fn softmax_impl(row: &mut [f32], valid: usize) {
            let (live, pad) = row.split_at_mut(valid.min(row.len()));
            let mut max = f32::NEG_INFINITY;
            for &v in live.iter() {
                max = if v > max { v } else { max };
            }
            let mut sums = [0f32; 8];
            let mut chunks = live.chunks_exact_mut(8);
            for c in &mut chunks {
                for i in 0..8 {
                    c[i] = super::exp(c[i] - max);
                    sums[i] += c[i];
                }
            }
            let mut sum: f32 = sums.iter().sum();
            for v in chunks.into_remainder() {
                *v = super::exp(*v - max);
                sum += *v;
            }
            let inv = 1.0 / sum;
            for v in live.iter_mut() {
                *v *= inv;
            }
            pad.fill(0.0);
        }

        /// `x = gelu(x + bias)` row by row (rows of `width`), GELU with the exact erf form.
        #[inline(always)]
        pub fn bias_gelu_impl(x: &mut [f32], bias: &[f32], width: usize) {
            for row in x.chunks_exact_mut(width) {
                for (v, b) in row.iter_mut().zip(bias) {
                    let y = *v + *b;
                    *v = 0.5 * y * (1.0 + super::erf(y * std::f32::consts::FRAC_1_SQRT_2));
                }
            }
        }

        /// Self-attention of heads `hd0..hd1` over one sequence: `qkv` holds its `len` rows of
        /// `[q | k | v]` (3 · `h` wide, before the bias `bqkv`; q already scaled by 1/sqrt(d));
        /// `out` gets `softmax(q kᵀ) v` of those heads, `len` rows of `(hd1 - hd0) · d`.
        ///
        /// One head at a time, so that its working set (kᵀ, a block of scores) stays in L1. q
        /// and v are read in place; only k is gathered (transposed). Two biases need no pass
        /// of their own: k's drops out (q·b_k is the same for every key of a query row, and
        /// softmax ignores a constant), and v's is added to the output (the probabilities of a
        /// row sum to 1).
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        pub fn attention_impl(
            qkv: &[f32],
            len: usize,
            h: usize,
            d: usize,
            heads: std::ops::Range<usize>,
            bqkv: &[f32],
            out: &mut [f32],
            scratch: &mut Vec<f32>,
        ) {
            const RB: usize = 4; // query rows per block
            const CB: usize = 16; // key columns per block
            let lp = len.div_ceil(CB) * CB;
            let stride = 3 * h;
            let w = heads.len() * d;
            scratch.clear();
            // Zeroed once: kᵀ's padding columns (len..lp) are never written and stay 0.
            scratch.resize(d * lp + RB * lp + RB * d, 0.0);
            let (kt, rest) = scratch.split_at_mut(d * lp);
            let (s, qb) = rest.split_at_mut(RB * lp);
            for (t, hd) in heads.enumerate() {
                let (qo, ko, vo) = (hd * d, h + hd * d, 2 * h + hd * d);
                // SAFETY: qkv holds len rows of `stride` from 0, k's columns ko..ko + d inside
                // each; kt holds d rows of lp >= len.
                unsafe { gather_kt(&qkv[ko..(len - 1) * stride + ko + d], len, stride, d, kt, lp) };
                let (bq, bv) = (&bqkv[qo..qo + d], &bqkv[vo..vo + d]);
                let v = &qkv[vo..];
                for i0 in (0..len).step_by(RB) {
                    let rows = RB.min(len - i0);
                    // This block's query rows with their bias (the last row repeated to fill it).
                    for r in 0..RB {
                        let src = &qkv[(i0 + r.min(rows - 1)) * stride + qo..][..d];
                        for ((q, x), b) in qb[r * d..(r + 1) * d].iter_mut().zip(src).zip(bq) {
                            *q = *x + *b;
                        }
                    }
                    // Scores of rows i0.. against all keys, a RB × CB register block at a time.
                    for j0 in (0..lp).step_by(CB) {
                        let mut acc = [[0f32; CB]; RB];
                        for e in 0..d {
                            let kv = &kt[e * lp + j0..e * lp + j0 + CB];
                            for (r, acc) in acc.iter_mut().enumerate() {
                                let qv = qb[r * d + e];
                                for c in 0..CB {
                                    acc[c] = madd(qv, kv[c], acc[c]);
                                }
                            }
                        }
                        for (r, acc) in acc.iter().enumerate() {
                            s[r * lp + j0..r * lp + j0 + CB].copy_from_slice(acc);
                        }
                    }
                    for r in 0..rows {
                        softmax_impl(&mut s[r * lp..r * lp + len], len);
                    }
                    // Output rows = p · v (+ v's bias). For MiniLM's head size two rows at a
                    // time, their 2 × 32 sums in registers across all keys (`pv_pair`).
                    let mut r = 0;
                    if d == super::PV_D {
                        while r + 2 <= rows {
                            let at = (i0 + r) * w + t * d;
                            let (first, second) = out[at..].split_at_mut(w);
                            // SAFETY: v holds len rows of `stride` (the last one at least
                            // PV_D long), the score rows hold len values, the outputs PV_D.
                            unsafe {
                                pv_pair(
                                    &s[r * lp..r * lp + len],
                                    &s[(r + 1) * lp..(r + 1) * lp + len],
                                    &v[..(len - 1) * stride + d],
                                    stride,
                                    &mut first[..d],
                                    &mut second[..d],
                                )
                            };
                            r += 2;
                        }
                    }
                    for r in r..rows {
                        let o = &mut out[(i0 + r) * w + t * d..(i0 + r) * w + (t + 1) * d];
                        o.fill(0.0);
                        for j in 0..len {
                            let p = s[r * lp + j];
                            for (o, v) in o.iter_mut().zip(&v[j * stride..j * stride + d]) {
                                *o = madd(p, *v, *o);
                            }
                        }
                    }
                    for r in 0..rows {
                        let o = &mut out[(i0 + r) * w + t * d..(i0 + r) * w + (t + 1) * d];
                        for (o, b) in o.iter_mut().zip(bv) {
                            *o += *b;
                        }
                    }
                }
            }
        }

        /// `x = layer_norm(x + bias + residual) * gamma + beta`, row by row.
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        pub fn add_ln_impl(
            x: &mut [f32],
            bias: Option<&[f32]>,
            residual: Option<&[f32]>,
            gamma: &[f32],
            beta: &[f32],
            eps: f32,
            width: usize,
        ) {
            for (r, row) in x.chunks_exact_mut(width).enumerate() {
                if let Some(b) = bias {
                    for (v, b) in row.iter_mut().zip(b) {
                        *v += *b;
                    }
                }
                if let Some(res) = residual {
                    for (v, s) in row.iter_mut().zip(&res[r * width..(r + 1) * width]) {
                        *v += *s;
                    }
                }
                let mut acc = [0f32; 8];
                let mut chunks = row.chunks_exact(8);
                for c in &mut chunks {
                    for i in 0..8 {
                        acc[i] += c[i];
                    }
                }
                let mut sum: f32 = acc.iter().sum();
                sum += chunks.remainder().iter().sum::<f32>();
                let mean = sum / width as f32;
                let mut acc = [0f32; 8];
                let mut chunks = row.chunks_exact(8);
                for c in &mut chunks {
                    for i in 0..8 {
                        let d = c[i] - mean;
                        acc[i] += d * d;
                    }
                }
                let mut var: f32 = acc.iter().sum();
                var += chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum::<f32>();
                let inv = 1.0 / (var / width as f32 + eps).sqrt();
                for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                    *v = (*v - mean) * inv * *g + *b;
                }
            }
        }
    };
}

mod generic {
    kernels_impl!();
    /// `o0 = p0 · v`, `o1 = p1 · v` for v of `p0.len()` rows of [`super::PV_D`], `stride` apart.
    ///
    /// # Safety
    /// `p1.len() == p0.len()`, `v.len() >= (p0.len() - 1) * stride + PV_D`, `o0.len() == o1.len() == PV_D`.
    #[inline(always)]
    unsafe fn pv_pair(p0: &[f32], p1: &[f32], v: &[f32], stride: usize, o0: &mut [f32], o1: &mut [f32]) {
        o0.fill(0.0);
        o1.fill(0.0);
        for (j, (a, b)) in p0.iter().zip(p1).enumerate() {
            for ((x, y), v) in o0.iter_mut().zip(o1.iter_mut()).zip(&v[j * stride..j * stride + super::PV_D]) {
                *x = madd(*a, *v, *x);
                *y = madd(*b, *v, *y);
            }
        }
    }
    /// `kt[e * lp + i] = k[i * stride + e]`: k's `len` rows of `d`, transposed.
    ///
    /// # Safety
    /// `k.len() >= (len - 1) * stride + d`, `kt.len() >= d * lp`, `lp >= len`.
    #[inline(always)]
    unsafe fn gather_kt(k: &[f32], len: usize, stride: usize, d: usize, kt: &mut [f32], lp: usize) {
        for i in 0..len {
            for (e, x) in k[i * stride..i * stride + d].iter().enumerate() {
                kt[e * lp + i] = *x;
            }
        }
    }
    /// a · b + c (no FMA in the baseline: `mul_add` would call libm).
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
    pub fn bias_gelu(x: &mut [f32], bias: &[f32], width: usize) {
        bias_gelu_impl(x, bias, width)
    }
    #[allow(clippy::too_many_arguments)]
    pub fn add_ln(x: &mut [f32], bias: Option<&[f32]>, residual: Option<&[f32]>, gamma: &[f32], beta: &[f32], eps: f32, width: usize) {
        add_ln_impl(x, bias, residual, gamma, beta, eps, width)
    }
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        qkv: &[f32],
        len: usize,
        h: usize,
        d: usize,
        hd: std::ops::Range<usize>,
        b: &[f32],
        out: &mut [f32],
        s: &mut Vec<f32>,
    ) {
        attention_impl(qkv, len, h, d, hd, b, out, s)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    kernels_impl!();
    /// `kt[e * lp + i] = k[i * stride + e]`: k's `len` rows of `d`, transposed 8 × 8 at a time
    /// in registers (the rest element by element).
    ///
    /// # Safety
    /// AVX2 present; `k.len() >= (len - 1) * stride + d`, `kt.len() >= d * lp`, `lp >= len`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn gather_kt(k: &[f32], len: usize, stride: usize, d: usize, kt: &mut [f32], lp: usize) {
        use std::arch::x86_64::*;
        debug_assert!(len == 0 || k.len() >= (len - 1) * stride + d);
        debug_assert!(kt.len() >= d * lp && lp >= len);
        let (kp, tp) = (k.as_ptr(), kt.as_mut_ptr());
        let mut i0 = 0;
        while i0 + 8 <= len {
            let mut e0 = 0;
            while e0 + 8 <= d {
                // SAFETY: rows i0..i0 + 8 < len, columns e0..e0 + 8 <= d (caller's contract).
                unsafe {
                    let row = |r: usize| _mm256_loadu_ps(kp.add((i0 + r) * stride + e0));
                    let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
                    let (r4, r5, r6, r7) = (row(4), row(5), row(6), row(7));
                    let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
                    let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
                    let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
                    let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
                    let (u0, u1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2));
                    let (u2, u3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3));
                    let (u4, u5) = (_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xEE>(t4, t6));
                    let (u6, u7) = (_mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xEE>(t5, t7));
                    let col = |c: usize| tp.add((e0 + c) * lp + i0);
                    _mm256_storeu_ps(col(0), _mm256_permute2f128_ps::<0x20>(u0, u4));
                    _mm256_storeu_ps(col(1), _mm256_permute2f128_ps::<0x20>(u1, u5));
                    _mm256_storeu_ps(col(2), _mm256_permute2f128_ps::<0x20>(u2, u6));
                    _mm256_storeu_ps(col(3), _mm256_permute2f128_ps::<0x20>(u3, u7));
                    _mm256_storeu_ps(col(4), _mm256_permute2f128_ps::<0x31>(u0, u4));
                    _mm256_storeu_ps(col(5), _mm256_permute2f128_ps::<0x31>(u1, u5));
                    _mm256_storeu_ps(col(6), _mm256_permute2f128_ps::<0x31>(u2, u6));
                    _mm256_storeu_ps(col(7), _mm256_permute2f128_ps::<0x31>(u3, u7));
                }
                e0 += 8;
            }
            for i in i0..i0 + 8 {
                for e in e0..d {
                    kt[e * lp + i] = k[i * stride + e];
                }
            }
            i0 += 8;
        }
        for i in i0..len {
            for e in 0..d {
                kt[e * lp + i] = k[i * stride + e];
            }
        }
    }
    /// a · b + c, one FMA instruction (inlined into the `fma` functions below).
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
    /// `o0 = p0 · v`, `o1 = p1 · v` for v of `p0.len()` rows of 32, `stride` apart: the 2 × 32
    /// sums in eight ymm registers, one FMA per (row, 8 outputs, key) in key order (the same
    /// sums, bit for bit, as the general loop).
    ///
    /// # Safety
    /// AVX2 and FMA present; `p1.len() == p0.len()`, `v.len() >= (p0.len() - 1) * stride + 32`,
    /// `o0.len() == o1.len() == 32`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn pv_pair(p0: &[f32], p1: &[f32], v: &[f32], stride: usize, o0: &mut [f32], o1: &mut [f32]) {
        use std::arch::x86_64::*;
        const _: () = assert!(super::PV_D == 32);
        debug_assert!(p1.len() == p0.len() && v.len() + stride >= p0.len() * stride + 32);
        debug_assert!(o0.len() == 32 && o1.len() == 32);
        let z = _mm256_setzero_ps();
        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
        let (mut b0, mut b1, mut b2, mut b3) = (z, z, z, z);
        let vp = v.as_ptr();
        for j in 0..p0.len() {
            // SAFETY: row j of v is in bounds (caller's contract).
            unsafe {
                let row = vp.add(j * stride);
                let (v0, v1) = (_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8)));
                let (v2, v3) = (_mm256_loadu_ps(row.add(16)), _mm256_loadu_ps(row.add(24)));
                let x = _mm256_set1_ps(*p0.get_unchecked(j));
                let y = _mm256_set1_ps(*p1.get_unchecked(j));
                a0 = _mm256_fmadd_ps(x, v0, a0);
                a1 = _mm256_fmadd_ps(x, v1, a1);
                a2 = _mm256_fmadd_ps(x, v2, a2);
                a3 = _mm256_fmadd_ps(x, v3, a3);
                b0 = _mm256_fmadd_ps(y, v0, b0);
                b1 = _mm256_fmadd_ps(y, v1, b1);
                b2 = _mm256_fmadd_ps(y, v2, b2);
                b3 = _mm256_fmadd_ps(y, v3, b3);
            }
        }
        // SAFETY: o0 and o1 hold 32 floats each (caller's contract).
        unsafe {
            let (x, y) = (o0.as_mut_ptr(), o1.as_mut_ptr());
            _mm256_storeu_ps(x, a0);
            _mm256_storeu_ps(x.add(8), a1);
            _mm256_storeu_ps(x.add(16), a2);
            _mm256_storeu_ps(x.add(24), a3);
            _mm256_storeu_ps(y, b0);
            _mm256_storeu_ps(y.add(8), b1);
            _mm256_storeu_ps(y.add(16), b2);
            _mm256_storeu_ps(y.add(24), b3);
        }
    }
    #[target_feature(enable = "avx2,fma")]
    pub fn bias_gelu(x: &mut [f32], bias: &[f32], width: usize) {
        bias_gelu_impl(x, bias, width)
    }
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub fn add_ln(x: &mut [f32], bias: Option<&[f32]>, residual: Option<&[f32]>, gamma: &[f32], beta: &[f32], eps: f32, width: usize) {
        add_ln_impl(x, bias, residual, gamma, beta, eps, width)
    }
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        qkv: &[f32],
        len: usize,
        h: usize,
        d: usize,
        hd: std::ops::Range<usize>,
        b: &[f32],
        out: &mut [f32],
        s: &mut Vec<f32>,
    ) {
        attention_impl(qkv, len, h, d, hd, b, out, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worst absolute error of [`erf`] and worst relative error of [`exp`] against libm on a grid.
    fn approximation_errors() -> (f32, f32) {
        let mut erf_err = 0f32;
        let mut exp_err = 0f32;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            erf_err = erf_err.max((erf(x) - libm_erf(x)).abs());
        }
        for i in -80_000..=8_000 {
            let x = i as f32 * 1e-3;
            let e = x.exp();
            exp_err = exp_err.max(((exp(x) - e) / e).abs());
        }
        (erf_err, exp_err)
    }

    /// erf in f64 (Abramowitz-Stegun 7.1.26 is too coarse; use the series / continued fraction).
    fn libm_erf(x: f32) -> f32 {
        let x = x as f64;
        // erf via the Taylor series for |x| < 3, erfc asymptotic continued fraction beyond.
        if x.abs() < 3.0 {
            let mut sum = x;
            let mut term = x;
            let x2 = x * x;
            for n in 1..200 {
                term *= -x2 / n as f64;
                let add = term / (2 * n + 1) as f64;
                sum += add;
                if add.abs() < 1e-17 {
                    break;
                }
            }
            (sum * 2.0 / std::f64::consts::PI.sqrt()) as f32
        } else {
            // erfc(x) = exp(-x^2)/(x sqrt(pi)) * continued fraction.
            let ax = x.abs();
            let mut f = 0.0;
            for n in (1..60).rev() {
                f = (n as f64 / 2.0) / (ax + f);
            }
            let erfc = (-ax * ax).exp() / (std::f64::consts::PI.sqrt() * (ax + f));
            (x.signum() * (1.0 - erfc)) as f32
        }
    }

    #[test]
    fn erf_and_exp_approximations_are_accurate() {
        let (erf_err, exp_err) = approximation_errors();
        assert!(erf_err < 1e-6, "erf error {erf_err:e}");
        assert!(exp_err < 1e-6, "exp relative error {exp_err:e}");
    }

    /// Attention of one head in f64, straight from the definition.
    fn naive_attention(qkv: &[f32], len: usize, h: usize, d: usize, hd: usize, b: &[f32]) -> Vec<f64> {
        let at = |i: usize, o: usize| (qkv[i * 3 * h + o] + b[o]) as f64;
        let mut out = vec![0f64; len * d];
        for i in 0..len {
            let s: Vec<f64> = (0..len)
                .map(|j| (0..d).map(|e| at(i, hd * d + e) * at(j, h + hd * d + e)).sum())
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = s.iter().map(|v| (v - max).exp()).sum();
            for (j, sj) in s.iter().enumerate() {
                let p = (sj - max).exp() / sum;
                for e in 0..d {
                    out[i * d + e] += p * at(j, 2 * h + hd * d + e);
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_the_definition() {
        for d in [32, 16] {
            attention_case(3 * d, d);
        }
    }

    fn attention_case(h: usize, d: usize) {
        let mut seed = 12345u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        };
        for len in [1usize, 3, 5, 16, 17, 70] {
            let qkv: Vec<f32> = (0..len * 3 * h).map(|_| rnd()).collect();
            let bias: Vec<f32> = (0..3 * h).map(|_| rnd() * 0.1).collect();
            for heads in [0..3, 1..3, 2..3] {
                let w = heads.len() * d;
                let mut got = vec![f32::NAN; len * w];
                let mut scratch = Vec::new();
                (kernels().attention)(&qkv, len, h, d, heads.clone(), &bias, &mut got, &mut scratch);
                let mut generic_out = vec![f32::NAN; len * w];
                generic::attention(&qkv, len, h, d, heads.clone(), &bias, &mut generic_out, &mut scratch);
                for (t, hd) in heads.clone().enumerate() {
                    let want = naive_attention(&qkv, len, h, d, hd, &bias);
                    for i in 0..len {
                        for e in 0..d {
                            let (g, gg, w_) = (got[i * w + t * d + e], generic_out[i * w + t * d + e], want[i * d + e]);
                            assert!((g as f64 - w_).abs() < 1e-4, "len {len} head {hd} [{i}][{e}]: {g} vs {w_}");
                            assert!((gg as f64 - w_).abs() < 1e-4, "generic, len {len} head {hd} [{i}][{e}]");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn precision_parses_and_resolves() {
        for (text, p) in [("auto", Precision::Auto), ("f32", Precision::F32), ("int8", Precision::Int8)] {
            assert_eq!(text.parse::<Precision>().unwrap(), p);
            assert_eq!(p.to_string(), text);
        }
        assert!("fp16".parse::<Precision>().is_err());
        assert_eq!(Precision::F32.resolve(), Precision::F32);
        assert_eq!(Precision::Int8.resolve(), Precision::Int8);
        let auto = Precision::Auto.resolve();
        assert_eq!(auto == Precision::Int8, crate::classifier::qgemm::vnni_available());
    }

    #[test]
    fn softmax_masks_padding_and_sums_to_one() {
        let mut row = vec![1.0f32, 2.0, 3.0, 100.0, -5.0];
        generic::softmax_impl(&mut row, 3);
        assert_eq!(&row[3..], &[0.0, 0.0]);
        assert!((row[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|x| x.exp()).collect();
        let s: f64 = e.iter().sum();
        for (got, want) in row.iter().zip(e.iter().map(|x| x / s)) {
            assert!((*got as f64 - want).abs() < 1e-6);
        }
    }
}
