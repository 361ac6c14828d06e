//! A fused CPU forward pass for BERT encoders like all-MiniLM-L6-v2 (f32), written to remove what
//! the profile of candle-transformers' `BertModel` shows besides the matrix products: scalar
//! `erff`/`expf` in GELU and softmax, one full pass over memory per elementwise op (bias, scale,
//! mask, residual, layer norm are separate tensor ops there), the three Q/K/V products, and fresh
//! allocations per op.
//!
//! Here the matrix products still go through Candle (`Tensor::matmul`, i.e. the `gemm` crate), with
//! Q, K and V fused into one (the 1/sqrt(d) scale folded into the query weights); everything
//! between two products is a single pass over the data: bias + head split, masked softmax, head
//! merge, bias + residual + layer norm, bias + GELU. GELU's erf and softmax's exp are branch-free
//! polynomial approximations (max error ~1e-7, checked against libm in the tests) that the
//! compiler vectorizes, with an AVX2+FMA build of the loops chosen at run time.
//!
//! Output: the last hidden state `(n, len, hidden)`, as `BertModel::forward` returns it; the
//! sentence embeddings agree with that path to a cosine of 0.9999998 (`benches/classifier.rs`
//! checks it on every run, `tests/classifier.rs` checks the result against sentence-transformers).
//! On this project's 2-core dev machine it takes a 128-token prompt from 75 to 43 ms on one thread
//! (see `benches/RESULTS.md`).

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
    /// f32 weights and activations (Candle's matmul): the reference.
    #[default]
    F32,
    /// int8 weights (per output channel) and activations (per token, dynamic), i32 accumulation:
    /// [`super::qgemm`].
    Int8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
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
            "f32" => Ok(Precision::F32),
            "int8" => Ok(Precision::Int8),
            other => bail!("unknown precision '{other}' (f32 or int8)"),
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
            Precision::F32 => Linear::F32(Tensor::from_vec(w, (inp, out), device)?),
            Precision::Int8 => Linear::Int8(QLinear::new(&w, inp, out)),
        })
    }

    /// `x · W` for `m` rows of `x`.
    fn forward(&self, x: &[f32], m: usize, device: &Device) -> anyhow::Result<Vec<f32>> {
        match self {
            Linear::F32(w) => {
                let inp = w.dims2()?.0;
                let y = Tensor::from_slice(x, (m, inp), device)?.matmul(w)?;
                with_f32(&y, |s| s.to_vec())
            }
            Linear::Int8(q) => Ok(q.forward(x, m)),
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

    /// Last hidden states `(n, len, hidden)` of a batch of token id sequences, padded (with id 0)
    /// to the longest; padding is masked out of attention.
    pub fn forward(&self, batch: &[&[u32]]) -> anyhow::Result<Tensor> {
        let (h, nh, d) = (self.hidden, self.heads, self.head_dim);
        let n = batch.len();
        let l = batch.iter().map(|s| s.len()).max().unwrap_or(0);
        if n == 0 || l == 0 {
            bail!("empty batch");
        }
        if l > self.max_pos {
            bail!("sequence of {l} tokens is longer than the model's {} positions", self.max_pos);
        }
        let lens: Vec<usize> = batch.iter().map(|s| s.len()).collect();
        let m = n * l;
        let k = kernels();

        // Embeddings + layer norm.
        let mut x = vec![0f32; m * h];
        for (b, seq) in batch.iter().enumerate() {
            for p in 0..l {
                let id = seq.get(p).copied().unwrap_or(0) as usize;
                if id >= self.vocab {
                    bail!("token id {id} is outside the vocabulary");
                }
                let row = &mut x[(b * l + p) * h..(b * l + p + 1) * h];
                let (wr, pr) = (&self.word[id * h..(id + 1) * h], &self.pos[p * h..(p + 1) * h]);
                for c in 0..h {
                    row[c] = wr[c] + pr[c] + self.type0[c];
                }
            }
        }
        (k.add_ln)(&mut x, None, None, &self.emb_ln.0, &self.emb_ln.1, self.eps, h);

        let dev = &self.device;
        for layer in &self.layers {
            let qkv = layer.wqkv.forward(&x, m, dev)?; // (m, 3h)
            // Bias, then split heads: q, k, v as (n * heads, l, d).
            let mut q = vec![0f32; m * h];
            let mut kk = vec![0f32; m * h];
            let mut v = vec![0f32; m * h];
            for b in 0..n {
                for p in 0..l {
                    let row = &qkv[(b * l + p) * 3 * h..(b * l + p + 1) * 3 * h];
                    for hd in 0..nh {
                        let dst = ((b * nh + hd) * l + p) * d;
                        for (which, out) in [&mut q, &mut kk, &mut v].into_iter().enumerate() {
                            let src = which * h + hd * d;
                            for e in 0..d {
                                out[dst + e] = row[src + e] + layer.bqkv[src + e];
                            }
                        }
                    }
                }
            }
            drop(qkv);
            let qt = Tensor::from_vec(q, (n * nh, l, d), dev)?;
            let kt = Tensor::from_vec(kk, (n * nh, l, d), dev)?;
            let vt = Tensor::from_vec(v, (n * nh, l, d), dev)?;
            let scores = qt.matmul(&kt.t()?)?; // (n * heads, l, l), already scaled
            let probs = with_f32(&scores, |s| {
                let mut out = s.to_vec();
                for (r, row) in out.chunks_exact_mut(l).enumerate() {
                    let b = r / (nh * l);
                    (k.softmax)(row, lens[b]);
                }
                out
            })?;
            let pt = Tensor::from_vec(probs, (n * nh, l, l), dev)?;
            let ctx = pt.matmul(&vt)?; // (n * heads, l, d)
            let merged = with_f32(&ctx, |s| {
                let mut out = vec![0f32; m * h];
                for b in 0..n {
                    for hd in 0..nh {
                        for p in 0..l {
                            let src = ((b * nh + hd) * l + p) * d;
                            let dst = (b * l + p) * h + hd * d;
                            out[dst..dst + d].copy_from_slice(&s[src..src + d]);
                        }
                    }
                }
                out
            })?;
            // x1 = LN(attn + bo + x)
            let mut x1 = layer.wo.forward(&merged, m, dev)?;
            (k.add_ln)(&mut x1, Some(&layer.bo), Some(&x), &layer.ln1.0, &layer.ln1.1, self.eps, h);
            let mut act = layer.w1.forward(&x1, m, dev)?; // (m, inter)
            (k.bias_gelu)(&mut act, &layer.b1, self.inter);
            // x = LN(ffn + b2 + x1)
            x = layer.w2.forward(&act, m, dev)?;
            (k.add_ln)(&mut x, Some(&layer.b2), Some(&x1), &layer.ln2.0, &layer.ln2.1, self.eps, h);
        }
        Ok(Tensor::from_vec(x, (n, l, h), &self.device)?)
    }
}

// ------------------------------------------------------------------------------------------------
// Elementwise kernels. Written as plain loops over f32 so that LLVM vectorizes them; compiled
// twice (baseline x86-64 and AVX2+FMA) and picked once at run time.

type AddLn = fn(&mut [f32], Option<&[f32]>, Option<&[f32]>, &[f32], &[f32], f32, usize);

struct Kernels {
    softmax: fn(&mut [f32], usize),
    bias_gelu: fn(&mut [f32], &[f32], usize),
    add_ln: AddLn,
}

fn kernels() -> &'static Kernels {
    static K: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Kernels {
                softmax: |row, valid| unsafe { avx2::softmax(row, valid) },
                bias_gelu: |x, b, w| unsafe { avx2::bias_gelu(x, b, w) },
                add_ln: |x, b, r, g, be, e, w| unsafe { avx2::add_ln(x, b, r, g, be, e, w) },
            };
        }
        Kernels {
            softmax: generic::softmax,
            bias_gelu: generic::bias_gelu,
            add_ln: generic::add_ln,
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
    pub fn softmax(row: &mut [f32], valid: usize) {
        softmax_impl(row, valid)
    }
    pub fn bias_gelu(x: &mut [f32], bias: &[f32], width: usize) {
        bias_gelu_impl(x, bias, width)
    }
    #[allow(clippy::too_many_arguments)]
    pub fn add_ln(x: &mut [f32], bias: Option<&[f32]>, residual: Option<&[f32]>, gamma: &[f32], beta: &[f32], eps: f32, width: usize) {
        add_ln_impl(x, bias, residual, gamma, beta, eps, width)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    kernels_impl!();
    #[target_feature(enable = "avx2,fma")]
    pub fn softmax(row: &mut [f32], valid: usize) {
        softmax_impl(row, valid)
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

    #[test]
    fn softmax_masks_padding_and_sums_to_one() {
        let mut row = vec![1.0f32, 2.0, 3.0, 100.0, -5.0];
        generic::softmax(&mut row, 3);
        assert_eq!(&row[3..], &[0.0, 0.0]);
        assert!((row[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|x| x.exp()).collect();
        let s: f64 = e.iter().sum();
        for (got, want) in row.iter().zip(e.iter().map(|x| x / s)) {
            assert!((*got as f64 - want).abs() < 1e-6);
        }
    }
}
