#!/usr/bin/env python3
"""Generate tests/fixtures/reference_embeddings.json for the embedding parity test.

Embeds a fixed set of varied texts with the *official* sentence-transformers
implementation of all-MiniLM-L6-v2 (CPU, offline, from the local copy in
models/all-MiniLM-L6-v2/) so the Rust embedder can be checked against it.

How to run (from the repo root):

    scripts/fetch-model.sh                         # puts the model in models/all-MiniLM-L6-v2/
    python3 -m venv .venv-ref                      # .venv-ref/ is git-ignored
    .venv-ref/bin/pip install torch sentence-transformers
    HF_HUB_OFFLINE=1 .venv-ref/bin/python training/reference/make_reference_embeddings.py

(`pip install torch` from PyPI pulls the CUDA wheels too; only the CPU is used.)

Output format:
    {"model": "all-MiniLM-L6-v2",
     "generator": "sentence-transformers X, torch Y",
     "max_seq_length": 256,
     "items": [{"text": str,
                "n_tokens": int,   # tokenizer output length WITHOUT truncation,
                                   # including [CLS] and [SEP]
                "embedding": [384 floats, L2-normalized, 7 significant digits]}]}

Each text is encoded on its own (batch size 1), so no padding is involved.
"""

import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / "models" / "all-MiniLM-L6-v2"
OUT_PATH = REPO_ROOT / "tests" / "fixtures" / "reference_embeddings.json"
MAX_SEQ_LENGTH = 256
DIM = 384

LONG_PROSE = (
    "The history of routing in computer networks is a long story of trade-offs between "
    "simplicity, speed, and adaptability. Early networks relied on static tables that "
    "operators edited by hand, which worked well enough when a handful of machines "
    "exchanged messages over leased lines, but broke down as soon as links began to fail "
    "or traffic patterns shifted during the day. Distance-vector protocols such as RIP "
    "let each router tell its neighbours how far away every destination was, and the "
    "network slowly converged on a consistent picture, although it could count to "
    "infinity when a link disappeared. Link-state protocols like OSPF took a different "
    "approach: every router flooded a description of its own links to everyone else, and "
    "each one then ran Dijkstra's shortest-path algorithm over the complete map. This "
    "converged faster and avoided many loops, at the cost of more memory and more CPU "
    "time on every device. Between autonomous systems, BGP chose yet another path, "
    "carrying whole paths rather than distances, so that operators could express policy "
    "preferences about which neighbours to trust and which to avoid. Modern systems that "
    "route requests between large language models face a surprisingly similar set of "
    "questions. Should a request go to the cheapest model that is probably good enough, "
    "or to the strongest model that is certainly good enough but ten times more "
    "expensive? How quickly should the router react when a provider starts returning "
    "errors or when latency doubles in the middle of the afternoon? How much state should "
    "it keep about past decisions, and how should it learn from the feedback that users "
    "give, which is sparse, noisy, and often delayed by minutes or hours? A small "
    "embedding model can turn each prompt into a vector, and a lightweight classifier can "
    "then estimate which tier of model is likely to answer it well. The design is only "
    "as good as its measurements, however, so every component needs careful tests, "
    "reproducible fixtures, and honest benchmarks that reflect real traffic rather than "
    "a handful of hand-picked examples that happen to flatter the approach. "
    "In the end, the best router is the one whose decisions can be explained, audited, "
    "and corrected when they turn out to be wrong, because they eventually will be."
)

LONG_CODE = '''
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A tiny token bucket rate limiter keyed by tenant id.
pub struct RateLimiter {
    capacity: f64,
    refill_per_sec: f64,
    buckets: HashMap<String, (f64, Instant)>,
}

impl RateLimiter {
    pub fn new(capacity: f64, refill_per_sec: f64) -> Self {
        Self { capacity, refill_per_sec, buckets: HashMap::new() }
    }

    /// Returns true if the request is allowed, consuming `cost` tokens.
    pub fn allow(&mut self, tenant: &str, cost: f64) -> bool {
        let now = Instant::now();
        let (tokens, last) = self
            .buckets
            .entry(tenant.to_string())
            .or_insert((self.capacity, now));
        let elapsed = now.duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * self.refill_per_sec).min(self.capacity);
        *last = now;
        if *tokens >= cost {
            *tokens -= cost;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_up_to_capacity_then_blocks() {
        let mut rl = RateLimiter::new(3.0, 0.0);
        assert!(rl.allow("a", 1.0));
        assert!(rl.allow("a", 1.0));
        assert!(rl.allow("a", 1.0));
        assert!(!rl.allow("a", 1.0));
        assert!(rl.allow("b", 1.0), "tenants are independent");
    }

    #[test]
    fn refills_over_time() {
        let mut rl = RateLimiter::new(1.0, 1000.0);
        assert!(rl.allow("x", 1.0));
        std::thread::sleep(Duration::from_millis(5));
        assert!(rl.allow("x", 1.0));
    }
}
'''

LONG_MIXED = " ".join(
    f"Step {i}: compute x_{i} = x_{i - 1} * {i} + sqrt({i}) and log the result;"
    for i in range(1, 61)
)

TEXTS = [
    # very short / minimal
    "a",
    "Hi",
    "?",
    # ordinary short sentences
    "What is the capital of France?",
    "The quick brown fox jumps over the lazy dog.",
    "Summarize this email in two sentences and keep a polite tone.",
    "Write a haiku about autumn rain.",
    # case sensitivity (model lower-cases)
    "THIS IS ALL CAPS AND SHOULD MATCH THE LOWERCASE VERSION AFTER TOKENIZATION",
    # medium-length technical request
    "I'm getting a segmentation fault in my C++ program when I call std::vector::push_back "
    "inside a loop that also holds a reference to an element of the same vector. Why?",
    # code
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)",
    "SELECT user_id, COUNT(*) AS n FROM orders WHERE created_at >= '2024-01-01' GROUP BY user_id HAVING n > 5;",
    "fn main() { let v: Vec<u32> = (0..10).map(|x| x * x).collect(); println!(\"{:?}\", v); }",
    # math
    "Prove that the square root of 2 is irrational.",
    "∫₀^∞ e^{-x²} dx = √π / 2, and ∑_{n=1}^{∞} 1/n² = π²/6.",
    "Solve for x: 3x^2 - 12x + 9 = 0",
    # non-English
    "Wie spät ist es? Ich möchte heute Abend ins Kino gehen, aber die Straßenbahn fährt nicht.",
    "机器学习是人工智能的一个分支，它使计算机能够从数据中学习。",
    "東京の天気は明日晴れるでしょうか？傘を持って行くべきですか。",
    "مرحبا بالعالم! كيف حالك اليوم؟",
    "Ça va très bien, merci — et vous? Ñandú, façade, naïve, coöperate.",
    "Привет, как дела? Это тест кириллицы.",
    # emoji
    "I love this! 😍🔥🚀 Best day ever 🎉🎉🎉",
    "👍",
    # punctuation-heavy
    "!!!??? ... --- *** ((([[[{{{}}}]]]))) ;;; ::: \"\"\" ''' ``` ~~~ @@@ ### $$$ %%% ^^^ &&&",
    "Wait... what?! No -- really?!? (Yes.) [Citation needed.] {Maybe} <tag/> a/b\\c|d",
    # whitespace oddities
    "   leading and trailing spaces   ",
    "tabs\tbetween\twords\tand\nnew\nlines\r\nwindows too",
    "multiple     spaces      between      words",
    "\u00a0non-breaking\u00a0spaces\u2003and\u2009thin\u200bzero-width",
    # numbers / identifiers / URLs
    "Order #A-1234-XYZ shipped on 2024-03-15T12:34:56Z to 221B Baker Street, London NW1 6XE.",
    "Visit https://example.com/path?query=1&other=two#frag or email me at someone@example.org",
    "3.14159265358979323846264338327950288419716939937510",
    # long inputs (> 256 tokens => exercises truncation)
    LONG_PROSE,
    LONG_CODE,
    LONG_MIXED,
]


def sig7(x: float) -> float:
    return float(f"{x:.7g}")


def main() -> int:
    if not (MODEL_DIR / "model.safetensors").is_file():
        print(f"model not found at {MODEL_DIR}; run scripts/fetch-model.sh first", file=sys.stderr)
        return 1

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    model = SentenceTransformer(str(MODEL_DIR), device="cpu")
    model.eval()
    if model.max_seq_length != MAX_SEQ_LENGTH:
        print(f"unexpected max_seq_length {model.max_seq_length}", file=sys.stderr)
        return 1
    module_types = [type(m).__name__ for m in model]
    if module_types[-1] != "Normalize":
        print(f"expected a Normalize module last, got {module_types}", file=sys.stderr)
        return 1

    tokenizer = model.tokenizer
    items = []
    n_truncated = 0
    for text in TEXTS:
        n_tokens = len(tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])
        if n_tokens > MAX_SEQ_LENGTH:
            n_truncated += 1
        with torch.inference_mode():
            emb = model.encode([text], batch_size=1, convert_to_numpy=True, show_progress_bar=False)[0]
        if emb.shape != (DIM,):
            print(f"bad embedding shape {emb.shape}", file=sys.stderr)
            return 1
        values = [sig7(float(v)) for v in emb]
        norm = math.sqrt(sum(v * v for v in values))
        if abs(norm - 1.0) > 1e-5:
            print(f"embedding not normalized (norm={norm}) for {text[:40]!r}", file=sys.stderr)
            return 1
        items.append({"text": text, "n_tokens": n_tokens, "embedding": values})

    if len(items) < 24 or n_truncated < 2:
        print(f"need >=24 items and >=2 truncated texts; got {len(items)} / {n_truncated}", file=sys.stderr)
        return 1

    out = {
        "model": "all-MiniLM-L6-v2",
        "generator": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}",
        "max_seq_length": MAX_SEQ_LENGTH,
        "items": items,
    }
    OUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    # One item per line-group (embedding on a single line) keeps the file diffable.
    lines = ["{"]
    for key in ("model", "generator", "max_seq_length"):
        lines.append(f"  {json.dumps(key)}: {json.dumps(out[key], ensure_ascii=False)},")
    lines.append('  "items": [')
    for i, it in enumerate(items):
        sep = "," if i + 1 < len(items) else ""
        lines.append("    {")
        lines.append(f"      \"text\": {json.dumps(it['text'], ensure_ascii=False)},")
        lines.append(f"      \"n_tokens\": {it['n_tokens']},")
        lines.append(f"      \"embedding\": {json.dumps(it['embedding'], separators=(',', ':'))}")
        lines.append("    }" + sep)
    lines.append("  ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    if json.loads(text) != out:
        print("internal error: formatted JSON does not round-trip", file=sys.stderr)
        return 1
    OUT_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {OUT_PATH} ({len(items)} items, {n_truncated} longer than {MAX_SEQ_LENGTH} tokens)")
    print(out["generator"])
    for it in items:
        print(f"  n_tokens={it['n_tokens']:4d}  {it['text'][:60]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
