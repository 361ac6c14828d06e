//! Criterion benches of the classifier's encoder (all-MiniLM-L6-v2, CPU, f32 and int8).
//!
//! - `encoder_single/{16,64,128,256}`: one prompt of exactly N tokens ([CLS] and [SEP] included)
//!   through [`Encoder::features`], what the inference pool runs per batch (forward pass, mean
//!   pooling and the focus pooling).
//! - `encoder_batch/{1,8,32}`: that many distinct 64-token prompts in one forward pass.
//! - `encoder_int8_single/*`, `encoder_int8_batch/*`: the same with `precision = "int8"`
//!   (`src/classifier/qgemm.rs`).
//! - `encoder_1t_single/128`, `encoder_int8_1t_single/128`, `encoder_1t_batch/32`,
//!   `encoder_int8_1t_batch/32`: on a one-thread rayon pool (the others use the global pool:
//!   `RAYON_NUM_THREADS`, default one per core).
//! - `candle_single/*`, `candle_batch/*`: the same through candle-transformers' `BertModel` (the
//!   encoder before its fused forward pass, `src/classifier/fused.rs`), after a parity check of the
//!   production encoder against it.
//! - `tokenize/128`: [`Encoder::tokenize_prompt`] of a system prompt + a user turn (128 tokens).
//! - `matmul_f32/*`: Candle's f32 matmul, to measure this machine's GFLOP/s (the FLOP floor).
//!
//! Throughput is reported in "elements" = FLOPs of the matmuls (see [`minilm_flops`]), so
//! criterion's `Gelem/s` reads as effective GFLOP/s. Needs `models/all-MiniLM-L6-v2`
//! (`scripts/setup.sh`); without it the encoder groups are skipped. `LADDER_BENCH_QUICK=1` runs
//! fewer samples. Run: `cargo bench --bench classifier`.

use candle_core::{Device, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ladder::classifier::Precision;
use ladder::classifier::encoder::{Encoder, FOCUS_TOKENS, Tokenized};
use ladder::classifier::fused::FusedBert;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

/// all-MiniLM-L6-v2 shape.
const LAYERS: u64 = 6;
const HIDDEN: u64 = 384;
const INTERMEDIATE: u64 = 1536;

/// FLOPs of the matmuls of one forward pass over `n` tokens (multiply-add = 2 FLOPs): per layer
/// Q, K, V and the attention output (4·h·h per token), the two FFN matrices (2·h·i per token),
/// and attention scores and the weighted sum of values (2·n·n·h). LayerNorm, softmax, GELU and
/// the embeddings are left out (a few percent).
pub fn minilm_flops(n: u64) -> u64 {
    LAYERS * (2 * n * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * INTERMEDIATE) + 2 * 2 * n * n * HIDDEN)
}

fn model_dir() -> PathBuf {
    std::env::var_os("LADDER_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2"))
}

fn quick() -> bool {
    std::env::var_os("LADDER_BENCH_QUICK").is_some()
}

const PROMPT: &str = include_str!("data/prompt.txt");

/// A prompt of exactly `n` ids ([CLS] body [SEP]) cut from the shared prompt text, starting
/// `offset` words in (so batches hold distinct prompts of equal length).
fn prompt_of(enc: &Encoder, n: usize, offset: usize) -> Tokenized {
    let words: Vec<&str> = PROMPT.split_whitespace().collect();
    let text = words[offset % words.len()..]
        .iter()
        .chain(words.iter())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let full = enc.tokenize_text(&text).expect("tokenize");
    assert!(full.ids.len() >= n, "prompt text too short for {n} tokens");
    let mut ids = full.ids[..n - 1].to_vec();
    ids.push(*full.ids.last().expect("[SEP]"));
    Tokenized {
        ids,
        truncated: false,
        focus: (0, n.min(FOCUS_TOKENS)),
    }
}

fn encoder_benches(c: &mut Criterion) {
    let dir = model_dir();
    if !dir.join("model.safetensors").exists() {
        eprintln!(
            "classifier bench: {} missing (run scripts/setup.sh); encoder benches skipped",
            dir.display()
        );
        return;
    }
    let enc = Encoder::load(&dir, 256).expect("load encoder");
    let int8 = Encoder::load_with(&dir, 256, Precision::Int8).expect("load int8 encoder");
    eprintln!("int8 encoder: {}", int8.describe());
    let (samples, measure) = if quick() { (10, 2) } else { (20, 6) };
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");

    for (group, enc) in [("encoder", &enc), ("encoder_int8", &int8)] {
        let mut g = c.benchmark_group(format!("{group}_single"));
        g.sample_size(samples).measurement_time(Duration::from_secs(measure));
        for n in [16usize, 64, 128, 256] {
            let p = prompt_of(enc, n, 0);
            g.throughput(Throughput::Elements(minilm_flops(n as u64)));
            g.bench_with_input(BenchmarkId::from_parameter(n), &p, |b, p| {
                b.iter(|| black_box(enc.features(&[p]).expect("features")))
            });
        }
        g.finish();

        let mut g = c.benchmark_group(format!("{group}_batch"));
        g.sample_size(10).measurement_time(Duration::from_secs(measure));
        for batch in [1usize, 8, 32] {
            let prompts: Vec<Tokenized> = (0..batch).map(|i| prompt_of(enc, 64, i * 7)).collect();
            let refs: Vec<&Tokenized> = prompts.iter().collect();
            g.throughput(Throughput::Elements(batch as u64 * minilm_flops(64)));
            g.bench_with_input(BenchmarkId::from_parameter(batch), &refs, |b, refs| {
                b.iter(|| black_box(enc.features(refs).expect("features")))
            });
        }
        g.finish();

        // One thread: a single prompt's latency and a batch's throughput without intra-op threads
        // (what each inference worker gets when `workers` equals the cores).
        let mut g = c.benchmark_group(format!("{group}_1t_single"));
        g.sample_size(samples).measurement_time(Duration::from_secs(measure));
        let p = prompt_of(enc, 128, 0);
        g.throughput(Throughput::Elements(minilm_flops(128)));
        g.bench_with_input(BenchmarkId::from_parameter(128), &p, |b, p| {
            b.iter(|| one_thread.install(|| black_box(enc.features(&[p]).expect("features"))))
        });
        g.finish();
        let mut g = c.benchmark_group(format!("{group}_1t_batch"));
        g.sample_size(10).measurement_time(Duration::from_secs(measure));
        let prompts: Vec<Tokenized> = (0..32).map(|i| prompt_of(enc, 64, i * 7)).collect();
        let refs: Vec<&Tokenized> = prompts.iter().collect();
        g.throughput(Throughput::Elements(32 * minilm_flops(64)));
        g.bench_with_input(BenchmarkId::from_parameter(32), &refs, |b, refs| {
            b.iter(|| one_thread.install(|| black_box(enc.features(refs).expect("features"))))
        });
        g.finish();
    }

    // Tokenization of a chat prompt (system + user) that fills 128 tokens.
    let words: Vec<&str> = PROMPT.split_whitespace().collect();
    let system = "You are a careful senior engineer. Answer concisely.";
    let user = words[..90].join(" ");
    let n = enc.tokenize_prompt(system, &user).expect("tokenize").ids.len();
    let mut g = c.benchmark_group("tokenize");
    g.sample_size(samples).measurement_time(Duration::from_secs(2));
    g.bench_function(BenchmarkId::from_parameter(n), |b| {
        b.iter(|| black_box(enc.tokenize_prompt(black_box(system), black_box(&user)).expect("tokenize")))
    });
    g.finish();
}

/// Candle f32 matmul GFLOP/s: a large square product (the machine's practical peak) and the
/// shapes of one MiniLM layer at 128 tokens.
fn matmul_benches(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut g = c.benchmark_group("matmul_f32");
    g.sample_size(10).measurement_time(Duration::from_secs(if quick() { 2 } else { 4 }));
    for (name, m, k, n) in [
        ("1024x1024x1024", 1024usize, 1024usize, 1024usize),
        ("128x384x1536", 128, 384, 1536),
        ("128x384x384", 128, 384, 384),
        ("4096x384x1536", 4096, 384, 1536),
    ] {
        let a = Tensor::randn(0f32, 1.0, (m, k), &dev).expect("randn");
        let b = Tensor::randn(0f32, 1.0, (k, n), &dev).expect("randn");
        g.throughput(Throughput::Elements(2 * (m * k * n) as u64));
        g.bench_function(name, |bch| bch.iter(|| black_box(a.matmul(&b).expect("matmul"))));
    }
    g.finish();
}

/// Masked mean pooling + L2 normalisation of `(n, len, h)` hidden states (sentence-transformers).
fn pooled(hidden: &Tensor, lens: &[usize]) -> Vec<Vec<f32>> {
    let (n, l, h) = hidden.dims3().expect("dims");
    let data: Vec<f32> = hidden.flatten_all().and_then(|t| t.to_vec1()).expect("to_vec");
    (0..n)
        .map(|b| {
            let mut v = vec![0f32; h];
            for p in 0..lens[b] {
                for (c, x) in v.iter_mut().enumerate() {
                    *x += data[(b * l + p) * h + c];
                }
            }
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter().map(|x| x / norm).collect()
        })
        .collect()
}

/// The reference: candle-transformers' `BertModel` (what the encoder ran before the fused pass,
/// and what `LADDER_ENCODER=candle` selects): parity of the production [`Encoder`] against it,
/// then the same single-prompt and batch benches.
fn candle_benches(c: &mut Criterion) {
    use candle_nn::VarBuilder;
    use candle_transformers::models::bert::{BertModel, Config};
    let dir = model_dir();
    if !dir.join("model.safetensors").exists() {
        return;
    }
    let enc = Encoder::load(&dir, 256).expect("load encoder");
    let config: Config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).expect("config")).expect("config");
    let dev = Device::Cpu;
    // SAFETY: the weights file is memory-mapped read-only and not modified while mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], candle_core::DType::F32, &dev) }.expect("vb");
    let bert = BertModel::load(vb, &config).expect("load BertModel");
    let forward = |batch: &[&[u32]]| -> Tensor {
        let l = batch.iter().map(|s| s.len()).max().unwrap_or(0);
        let pad = |s: &[u32], fill: u32, val: Option<u32>| {
            let mut v: Vec<u32> = s.iter().map(|x| val.unwrap_or(*x)).collect();
            v.resize(l, fill);
            v
        };
        let ids: Vec<u32> = batch.iter().flat_map(|s| pad(s, 0, None)).collect();
        let mask: Vec<u32> = batch.iter().flat_map(|s| pad(s, 0, Some(1))).collect();
        let ids = Tensor::from_vec(ids, (batch.len(), l), &dev).expect("ids");
        let mask = Tensor::from_vec(mask, (batch.len(), l), &dev).expect("mask");
        bert.forward(&ids, &ids.zeros_like().expect("types"), Some(&mask)).expect("forward")
    };
    // Parity: one batch of mixed lengths (padding included), production encoder vs BertModel.
    let prompts: Vec<Tokenized> = [16usize, 64, 128, 256, 40]
        .iter()
        .enumerate()
        .map(|(i, &n)| prompt_of(&enc, n, i * 11))
        .collect();
    let ids: Vec<&[u32]> = prompts.iter().map(|p| p.ids.as_slice()).collect();
    let lens: Vec<usize> = ids.iter().map(|s| s.len()).collect();
    let reference = pooled(&forward(&ids), &lens);
    let ours = enc.embed(&ids).expect("embed");
    let fused = pooled(&FusedBert::load(&dir).expect("fused").forward(&ids).expect("fused forward"), &lens);
    let worst = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>())
            .fold(f32::INFINITY, f32::min)
    };
    let (w_enc, w_fused) = (worst(&reference, &ours), worst(&reference, &fused));
    eprintln!("encoder vs candle BertModel: worst cosine {w_enc:.7} (fused pass alone: {w_fused:.7})");
    assert!(w_enc > 0.99999 && w_fused > 0.99999, "the encoder diverges from BertModel");

    let (samples, measure) = if quick() { (10, 2) } else { (20, 6) };
    let mut g = c.benchmark_group("candle_single");
    g.sample_size(samples).measurement_time(Duration::from_secs(measure));
    for n in [16usize, 64, 128, 256] {
        let p = prompt_of(&enc, n, 0);
        g.throughput(Throughput::Elements(minilm_flops(n as u64)));
        g.bench_with_input(BenchmarkId::from_parameter(n), &p, |b, p| {
            b.iter(|| black_box(forward(&[p.ids.as_slice()])))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("candle_batch");
    g.sample_size(10).measurement_time(Duration::from_secs(measure));
    for batch in [1usize, 8, 32] {
        let prompts: Vec<Tokenized> = (0..batch).map(|i| prompt_of(&enc, 64, i * 7)).collect();
        let refs: Vec<&[u32]> = prompts.iter().map(|p| p.ids.as_slice()).collect();
        g.throughput(Throughput::Elements(batch as u64 * minilm_flops(64)));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &refs, |b, refs| {
            b.iter(|| black_box(forward(refs)))
        });
    }
    g.finish();
}

criterion_group!(benches, encoder_benches, candle_benches, matmul_benches);
criterion_main!(benches);
