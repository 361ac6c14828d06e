//! Randomized (mutation) tests on stable Rust, in CI: the fuzz targets' bodies (`fuzz/common.rs`)
//! run over the seed corpus (`fuzz/seeds/<target>/`), thousands of deterministic mutations of it,
//! and every saved crash input (`fuzz/regressions/<target>/`). `scripts/fuzz.sh` runs the same
//! targets under libFuzzer for longer.
//!
//! `LADDER_RANDOMIZED_ITERS` (default 2000 per target) and `LADDER_RANDOMIZED_SEED` change the run.

#[path = "../fuzz/common.rs"]
mod targets;

use std::path::Path;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Fragments that tend to reach interesting parser states.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e999",
    b"18446744073709551616",
    b"1.5",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b"data: ",
    b"event: ",
    b"data: [DONE]\n\n",
    b": c\n",
    b"\xff",
    b"\xc3",
    b"\xe2\x82",
    b"\"role\":\"tool\"",
    b"\"content\":null",
    b"\"ladder\":{}",
    b"\"task\":\"math\"",
    b"\"models\":[]",
    b"\"max_tokens\":0",
    b"\"type\":\"tool_use\"",
    b"\"stop_reason\":\"max_tokens\"",
    b"{\"type\":\"message_stop\"}",
    b"\"finishReason\":\"STOP\"",
    b"\"functionCall\":{\"name\":\"f\",\"args\":{}}",
    b"{\"error\":{\"code\":503}}",
    b"\"thought\":true",
    b"\"index\":4294967296",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let pos = rng.below(d.len() + 1);
        match rng.below(7) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let end = (pos + 1 + rng.below(16)).min(d.len());
                d.drain(pos.min(end)..end);
            }
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                d.splice(pos..pos, t.iter().copied());
            }
            3 => d.truncate(pos),
            4 if !d.is_empty() => {
                // Duplicate a slice (repeats structure).
                let a = rng.below(d.len());
                let b = (a + 1 + rng.below(32)).min(d.len());
                let s = d[a..b].to_vec();
                d.splice(pos..pos, s);
            }
            5 => {
                // Splice in part of another seed.
                let other = &seeds[rng.below(seeds.len())];
                let a = rng.below(other.len() + 1);
                let b = (a + rng.below(64)).min(other.len());
                d.splice(pos..pos, other[a..b].iter().copied());
            }
            _ => d.insert(pos, rng.next() as u8),
        }
    }
    d
}

fn files(dir: &Path) -> Vec<Vec<u8>> {
    let mut out: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| (e.path(), std::fs::read(e.path()).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.into_iter().map(|(_, d)| d).collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn run(name: &str, target: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let seeds = files(&root.join("seeds").join(name));
    assert!(!seeds.is_empty(), "no seeds for {name}");
    for (i, input) in files(&root.join("regressions").join(name)).iter().enumerate() {
        target(input);
        let _ = i;
    }
    for s in &seeds {
        target(s);
    }
    let iters = env_u64("LADDER_RANDOMIZED_ITERS", 2000);
    let mut rng = Rng(env_u64("LADDER_RANDOMIZED_SEED", 0x005e_ed1a_dde4_u64) ^ name.len() as u64 | 1);
    for i in 0..iters {
        let input = mutate(&mut rng, &seeds);
        let r = std::panic::catch_unwind(|| target(&input));
        if r.is_err() {
            let dir = std::env::temp_dir().join("ladder-randomized-crashes").join(name);
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("crash-{i}"));
            let _ = std::fs::write(&path, &input);
            panic!(
                "{name}: iteration {i} panicked; input saved to {} (copy it to fuzz/regressions/{name}/)",
                path.display()
            );
        }
    }
}

#[test]
fn chat_request() {
    run("chat_request", targets::chat_request);
}

#[test]
fn hints() {
    run("hints", targets::hints);
}

#[test]
fn sse() {
    run("sse", targets::sse);
}

#[test]
fn anthropic_response() {
    run("anthropic_response", targets::anthropic_response);
}

#[test]
fn stream_translation() {
    run("stream_translation", targets::stream_translation);
}

#[test]
fn gemini_response() {
    run("gemini_response", targets::gemini_response);
}

#[test]
fn gemini_stream() {
    run("gemini_stream", targets::gemini_stream);
}

#[test]
fn every_target_is_tested() {
    let names: Vec<&str> = targets::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "chat_request",
            "hints",
            "sse",
            "anthropic_response",
            "stream_translation",
            "gemini_response",
            "gemini_stream"
        ]
    );
}
