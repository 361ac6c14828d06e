"""The encoder benchmark's peer: the same prompts through sentence-transformers on CPU, and this
machine's f32 matmul GFLOP/s (numpy and torch), for the FLOP floor.

Prompts are cut exactly like benches/classifier.rs cuts them: the shared text
(benches/data/prompt.txt) tokenized with the model's own tokenizer, the first N-2 ids, wrapped in
[CLS] ... [SEP]. Two timings per prompt length:
- `forward`: the SentenceTransformer module chain (BERT + mean pooling + normalize) on the ready
  token ids: the same work as Ladder's `Encoder::features` (which excludes tokenization);
- `encode`: `model.encode(text)` on the decoded text, tokenization included.

Usage: python benches/st_compare.py MODEL_DIR THREADS OUT_JSON
"""

import json
import os
import statistics
import sys
import time

model_dir, threads, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.environ.setdefault("OMP_NUM_THREADS", str(threads))
os.environ.setdefault("MKL_NUM_THREADS", str(threads))
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(threads))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

torch.set_num_threads(threads)
here = os.path.dirname(os.path.abspath(__file__))
text = open(os.path.join(here, "data", "prompt.txt")).read()
words = text.split()

model = SentenceTransformer(model_dir, device="cpu")
model.eval()
tok = model.tokenizer
cls_id, sep_id = tok.cls_token_id, tok.sep_token_id


def ids_of(n, offset=0):
    t = " ".join(words[offset % len(words):] + words)
    body = tok(t, add_special_tokens=False)["input_ids"][: n - 2]
    return [cls_id] + body + [sep_id]


def time_it(fn, min_time=3.0, min_iters=5, max_iters=200):
    fn()  # warm-up
    fn()
    times = []
    start = time.perf_counter()
    while (time.perf_counter() - start < min_time or len(times) < min_iters) and len(times) < max_iters:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3, "iters": len(times)}


def forward(batch_ids):
    n = len(batch_ids)
    L = max(len(x) for x in batch_ids)
    ids = torch.zeros((n, L), dtype=torch.long)
    mask = torch.zeros((n, L), dtype=torch.long)
    for i, x in enumerate(batch_ids):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    feats = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.inference_mode():
        return model(feats)["sentence_embedding"]


results = {"threads": threads, "torch": torch.__version__, "single": {}, "batch": {}, "encode": {}, "matmul": {}}
for n in (16, 64, 128, 256):
    ids = ids_of(n)
    assert len(ids) == n
    results["single"][str(n)] = time_it(lambda: forward([ids]))
    txt = tok.decode(ids[1:-1])
    results["encode"][str(n)] = time_it(lambda: model.encode([txt], batch_size=1, convert_to_numpy=True))
    results["encode"][str(n)]["tokens"] = len(tok(txt)["input_ids"])
for b in (1, 8, 32):
    batch = [ids_of(64, i * 7) for i in range(b)]
    results["batch"][str(b)] = time_it(lambda: forward(batch), min_time=4.0, min_iters=3)

# f32 matmul GFLOP/s: numpy (its bundled BLAS) and torch, large square and MiniLM shapes.
for lib in ("numpy", "torch"):
    for m, k, n in ((1024, 1024, 1024), (2048, 2048, 2048), (128, 384, 1536), (4096, 384, 1536)):
        if lib == "numpy":
            a = np.random.rand(m, k).astype(np.float32)
            b = np.random.rand(k, n).astype(np.float32)
            r = time_it(lambda: a @ b, min_time=2.0)
        else:
            a = torch.rand(m, k)
            b = torch.rand(k, n)
            with torch.inference_mode():
                r = time_it(lambda: a @ b, min_time=2.0)
        r["gflops"] = 2 * m * k * n / (r["min_ms"] / 1e3) / 1e9
        r["gflops_median"] = 2 * m * k * n / (r["median_ms"] / 1e3) / 1e9
        results["matmul"][f"{lib}/{m}x{k}x{n}"] = r

json.dump(results, open(out_path, "w"), indent=1)
print(json.dumps(results))
