//! A small HTTP load generator for Ladder's end-to-end benchmarks (`scripts/bench.sh`), for the
//! cases `oha` and `wrk` cannot do: a different prompt in every request (so the classifier's
//! embedding cache does not hide the encoder), at a constant rate or at saturation.
//!
//! - `--rate R` (> 0): open loop at R requests/s spread over `--concurrency` connections, wrk2
//!   style: each connection has a fixed schedule and latency is measured from the *intended*
//!   send time, so a stalled server is not hidden by coordinated omission.
//! - `--rate 0`: closed loop, `--concurrency` connections sending back to back (saturation).
//! - `--prompt-tokens T`: every prompt is exactly T tokens for all-MiniLM-L6-v2 ([CLS] and [SEP]
//!   included): T - 2 whole words taken from the model's vocabulary (one token each, checked
//!   with the tokenizer). `--distinct K` cycles over K prompts instead (repeats hit the cache).
//!   Without it every request carries the same short prompt.
//!
//! Prints one JSON line with the achieved throughput and latency percentiles (and writes it to
//! `--out`). Without `--url` (as under a plain `cargo bench`) it does nothing.
//! Run: `cargo bench --bench loadgen -- --url http://127.0.0.1:4000/v1/chat/completions --rate 200`.

use clap::Parser;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(name = "loadgen")]
struct Args {
    /// Chat completions URL; without it the bench exits at once.
    #[arg(long)]
    url: Option<String>,
    /// Requests per second (open loop); 0 = closed loop at saturation.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Connections (and at most this many requests in flight).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Stop after this many requests (measured ones), whichever comes first.
    #[arg(long)]
    max_requests: Option<u64>,
    #[arg(long, default_value = "auto")]
    model: String,
    #[arg(long)]
    stream: bool,
    /// Prompt length in tokens (0: a fixed short prompt).
    #[arg(long, default_value_t = 0)]
    prompt_tokens: usize,
    /// Number of distinct prompts to cycle through (0: every request distinct).
    #[arg(long, default_value_t = 0)]
    distinct: u64,
    /// Seed of the prompt generator (use a new one per run to avoid a warm cache).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Bearer token.
    #[arg(long)]
    auth: Option<String>,
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    model_dir: PathBuf,
    #[arg(long, default_value = "")]
    label: String,
    /// Append the JSON result line to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// SplitMix64: a tiny deterministic generator (prompt i is a pure function of seed and i).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Prompts {
    words: Vec<String>,
    tokens: usize,
    distinct: u64,
    seed: u64,
    model: String,
    stream: bool,
}

impl Prompts {
    fn text(&self, i: u64) -> String {
        if self.tokens == 0 {
            return "Say hello to the benchmark.".into();
        }
        let i = if self.distinct > 0 { i % self.distinct } else { i };
        let mut state = mix(self.seed ^ mix(i));
        let mut out = String::with_capacity(self.tokens * 8);
        for k in 0..self.tokens - 2 {
            state = mix(state);
            if k > 0 {
                out.push(' ');
            }
            out.push_str(&self.words[(state % self.words.len() as u64) as usize]);
        }
        out
    }

    fn body(&self, i: u64) -> Vec<u8> {
        let mut v = json!({"model": self.model, "messages": [{"role": "user", "content": self.text(i)}]});
        if self.stream {
            v["stream"] = json!(true);
        }
        serde_json::to_vec(&v).expect("json")
    }
}

fn load_words(args: &Args) -> anyhow::Result<Vec<String>> {
    let vocab = std::fs::read_to_string(args.model_dir.join("vocab.txt"))?;
    let words: Vec<String> = vocab
        .lines()
        .filter(|w| (3..=12).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_lowercase()))
        .map(String::from)
        .collect();
    anyhow::ensure!(words.len() > 1000, "vocabulary too small");
    Ok(words)
}

/// Check that generated prompts have the advertised token count.
fn check_tokens(args: &Args, prompts: &Prompts) -> anyhow::Result<()> {
    let mut tok = tokenizers::Tokenizer::from_file(args.model_dir.join("tokenizer.json")).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The shipped tokenizer.json pads and truncates to 128.
    tok.with_padding(None);
    tok.with_truncation(None).map_err(|e| anyhow::anyhow!("{e}"))?;
    for i in 0..20 {
        let n = tok
            .encode(prompts.text(i), false)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .get_ids()
            .len();
        anyhow::ensure!(
            n + 2 == prompts.tokens,
            "prompt {i} has {} tokens, wanted {}",
            n + 2,
            prompts.tokens
        );
    }
    Ok(())
}

#[derive(Default)]
struct WorkerResult {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

async fn worker(
    w: usize,
    args: Arc<Args>,
    prompts: Arc<Prompts>,
    client: reqwest::Client,
    counter: Arc<AtomicU64>,
    start: Instant,
) -> WorkerResult {
    let url = args.url.clone().unwrap_or_default();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.duration);
    let period = (args.rate > 0.0).then(|| Duration::from_secs_f64(args.concurrency as f64 / args.rate));
    // Stagger the connections' schedules over one period.
    let mut next = start + period.map_or(Duration::ZERO, |p| p.mul_f64(w as f64 / args.concurrency as f64));
    let mut out = WorkerResult::default();
    let max = args.max_requests.unwrap_or(u64::MAX);
    loop {
        if let Some(p) = period {
            tokio::time::sleep_until(next.into()).await;
            next += p;
        }
        let sent = Instant::now();
        if sent >= end || out.latencies_us.len() as u64 >= max {
            break;
        }
        let intended = if period.is_some() {
            next - period.unwrap_or_default()
        } else {
            sent
        };
        let i = counter.fetch_add(1, Ordering::Relaxed);
        let mut req = client.post(&url).header("content-type", "application/json").body(prompts.body(i));
        if let Some(a) = &args.auth {
            req = req.bearer_auth(a);
        }
        let result = match req.send().await {
            Ok(r) => {
                let status = r.status();
                match r.bytes().await {
                    Ok(b) if status.is_success() => Ok(b.len()),
                    Ok(b) => Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&b[..b.len().min(200)]))),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        let done = Instant::now();
        if intended < measure_from {
            continue;
        }
        match result {
            Ok(_) => out.latencies_us.push(done.duration_since(intended).as_micros() as u64),
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(e);
            }
        }
    }
    out
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.url.is_none() {
        println!("loadgen: no --url given; nothing to do (see scripts/bench.sh)");
        return Ok(());
    }
    let words = if args.prompt_tokens > 0 { load_words(&args)? } else { Vec::new() };
    let prompts = Arc::new(Prompts {
        words,
        tokens: args.prompt_tokens,
        distinct: args.distinct,
        seed: args.seed,
        model: args.model.clone(),
        stream: args.stream,
    });
    if args.prompt_tokens > 0 {
        anyhow::ensure!(args.prompt_tokens >= 3, "--prompt-tokens must be at least 3");
        check_tokens(&args, &prompts)?;
    }
    let threads: usize = std::env::var("LOADGEN_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let args = Arc::new(args);
    let result = rt.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(args.concurrency)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(60))
            .build()?;
        let counter = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let handles: Vec<_> = (0..args.concurrency)
            .map(|w| tokio::spawn(worker(w, args.clone(), prompts.clone(), client.clone(), counter.clone(), start)))
            .collect();
        let mut all = WorkerResult::default();
        for h in handles {
            let r = h.await?;
            all.latencies_us.extend(r.latencies_us);
            all.errors += r.errors;
            if all.first_error.is_none() {
                all.first_error = r.first_error;
            }
        }
        let measured = (start.elapsed().as_secs_f64() - args.warmup).clamp(1e-9, args.duration);
        anyhow::Ok((all, measured))
    })?;
    let (mut all, measured) = result;
    all.latencies_us.sort_unstable();
    let n = all.latencies_us.len();
    let mean = all.latencies_us.iter().sum::<u64>() as f64 / n.max(1) as f64 / 1000.0;
    let line = json!({
        "label": args.label,
        "tool": "loadgen",
        "url": args.url,
        "model": args.model,
        "stream": args.stream,
        "target_rps": args.rate,
        "concurrency": args.concurrency,
        "prompt_tokens": args.prompt_tokens,
        "distinct": args.distinct,
        "duration_s": measured,
        "requests": n,
        "errors": all.errors,
        "first_error": all.first_error,
        "rps": n as f64 / measured,
        "p50_ms": pct(&all.latencies_us, 50.0),
        "p90_ms": pct(&all.latencies_us, 90.0),
        "p99_ms": pct(&all.latencies_us, 99.0),
        "p999_ms": pct(&all.latencies_us, 99.9),
        "max_ms": pct(&all.latencies_us, 100.0),
        "mean_ms": mean,
    });
    println!("{line}");
    if let Some(path) = &args.out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        writeln!(f, "{line}")?;
    }
    Ok(())
}
