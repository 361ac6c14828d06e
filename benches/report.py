"""Summarise scripts/bench.sh results (target/bench/results/*.jsonl) as Markdown tables.

Usage: python3 benches/report.py target/bench/results
"""

import json
import os
import sys

res = sys.argv[1] if len(sys.argv) > 1 else "target/bench/results"


def load(name):
    path = os.path.join(res, name)
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path) if line.strip()]


def f(v, nd=2):
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{nd}f}"


out = []
load_notes = {r["step"]: r["uptime"] for r in load("load.jsonl")}

# 1. Proxy overhead.
proxy = load("proxy.jsonl")
if proxy:
    out.append(f"### Proxy overhead (classifier off, model `m1`; load average at start: {load_notes.get('proxy', '?')})\n")
    variants = {"ladder": "default (response after its record's commit)", "ladder-nowait": "`wait_for_commit = false`"}
    out.append("| Ladder | mode | offered RPS | direct p50 / p99 ms | Ladder p50 / p99 ms | added p50 / p99 ms | Ladder achieved RPS | errors |")
    out.append("|---|---|---|---|---|---|---|---|")
    for label, name in variants.items():
        for stream in (False, True):
            rates = sorted({r["target_rps"] for r in proxy if r["stream"] == stream and r["tool"] == "oha"})
            for rate in rates:
                d = next((r for r in proxy if r["stream"] == stream and r["target_rps"] == rate and r["label"] == "direct"), None)
                l = next((r for r in proxy if r["stream"] == stream and r["target_rps"] == rate and r["label"] == label), None)
                if not d or not l:
                    continue
                out.append(
                    f"| {name} | {'stream' if stream else 'non-stream'} | {rate:.0f} | {f(d['p50_ms'], 3)} / {f(d['p99_ms'], 3)} | "
                    f"{f(l['p50_ms'], 3)} / {f(l['p99_ms'], 3)} | {f(l['p50_ms'] - d['p50_ms'], 3)} / {f(l['p99_ms'] - d['p99_ms'], 3)} | "
                    f"{f(l['rps'], 0)} | {l['non_2xx_or_error']} |"
                )
            d = next((r for r in proxy if r["stream"] == stream and r["tool"] == "wrk" and r["label"] == "direct"), None)
            l = next((r for r in proxy if r["stream"] == stream and r["tool"] == "wrk" and r["label"] == label), None)
            if d and l:
                out.append(
                    f"| {name} | {'stream' if stream else 'non-stream'} | saturation (wrk, 64 conns) | {f(d['rps'], 0)} RPS, p50 {f(d['p50_ms'])} | "
                    f"{f(l['rps'], 0)} RPS, p50 {f(l['p50_ms'])} / p99 {f(l['p99_ms'])} | | {f(l['rps'], 0)} | {l['non_2xx_or_error']} |"
                )
    out.append("")

# 2. LiteLLM.
lite = load("litellm.jsonl")
if lite:
    out.append(f"### LiteLLM proxy, same upstream and load (load average at start: {load_notes.get('litellm', '?')})\n")
    out.append("| proxy | mode | offered RPS | achieved RPS | p50 / p99 ms | errors |")
    out.append("|---|---|---|---|---|---|")
    for r in lite:
        rate = "saturation" if r["tool"] == "wrk" else f"{r['target_rps']:.0f}"
        out.append(
            f"| {r['label']} | {'stream' if r['stream'] else 'non-stream'} | {rate} | {f(r['rps'], 0)} | "
            f"{f(r['p50_ms'])} / {f(r['p99_ms'])} | {r['non_2xx_or_error']} |"
        )
    for stream in (False, True):
        l = next((r for r in proxy if r["stream"] == stream and r["tool"] == "wrk" and r["label"] == "ladder"), None)
        best = max((r for r in lite if r["stream"] == stream and r["tool"] == "wrk"), key=lambda r: r["rps"], default=None)
        if l and best:
            out.append(
                f"\n**{'stream' if stream else 'non-stream'} saturation: Ladder {f(l['rps'], 0)} RPS vs best LiteLLM "
                f"({best['label']}) {f(best['rps'], 0)} RPS = {l['rps'] / best['rps']:.1f}x**"
            )
    out.append("")

# 3. Encoder.
enc = {r["label"]: r for r in load("encoder.jsonl")}
st_path = os.path.join(res, "st.json")
st = json.load(open(st_path)) if os.path.exists(st_path) else None
if enc:
    peaks = {k: v["gflops"] for k, v in enc.items() if k.startswith("matmul_f32/") and "gflops" in v}
    if st:
        for k, v in st["matmul"].items():
            peaks[k] = v["gflops"]
    peak_name, peak = max(peaks.items(), key=lambda kv: kv[1]) if peaks else ("?", None)
    out.append(f"### Encoder (load average at start: {load_notes.get('encoder', '?')})\n")
    out.append("f32 matmul GFLOP/s on this machine: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(peaks.items())))
    out.append(f"\nFLOP floor = matmul FLOPs / {peak:.1f} GFLOP/s ({peak_name}, the best measured).\n" if peak else "")
    ms = lambda label: enc[label]["median_ms"] if label in enc else None
    out.append("Ladder's default precision is `auto`: int8 on CPUs with AVX-512 VNNI (this one), else f32. "
               "2 threads unless marked 1t.\n")
    out.append("| tokens | matmul GFLOP | f32 floor ms | Ladder int8 ms | int8 / floor | Ladder f32 ms | f32 / floor | int8 1t ms | f32 1t ms | "
               "candle BertModel ms | sentence-transformers ms | ST / Ladder int8 |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in ("16", "64", "128", "256"):
        e = enc.get(f"encoder_single/{n}")
        if not e:
            continue
        q, q1, e1, c = ms(f"encoder_int8_single/{n}"), ms(f"encoder_int8_1t_single/{n}"), ms(f"encoder_1t_single/{n}"), ms(f"candle_single/{n}")
        floor = e["flops"] / (peak * 1e9) * 1e3 if peak else None
        s = st["single"][n]["median_ms"] if st else None
        ratio = lambda v: f(v / floor) if (v and floor) else "–"
        out.append(
            f"| {n} | {e['flops'] / 1e9:.2f} | {f(floor)} | {f(q)} | {ratio(q)} | {f(e['median_ms'])} | {ratio(e['median_ms'])} | {f(q1)} | {f(e1)} | "
            f"{f(c)} | {f(s)} | {f(s / q) if (s and q) else '–'} |"
        )
    out.append("\n| batch of 64-token prompts | Ladder int8 ms | prompts/s | Ladder f32 ms | prompts/s | candle BertModel ms | sentence-transformers ms | prompts/s |")
    out.append("|---|---|---|---|---|---|---|---|")
    pps = lambda b, v: f(int(b) / v * 1e3, 1) if v else "–"
    for b in ("1", "8", "32"):
        e = ms(f"encoder_batch/{b}")
        if e is None:
            continue
        q, c = ms(f"encoder_int8_batch/{b}"), ms(f"candle_batch/{b}")
        s = st["batch"][b]["median_ms"] if st else None
        out.append(f"| {b} | {f(q)} | {pps(b, q)} | {f(e)} | {pps(b, e)} | {f(c)} | {f(s)} | {pps(b, s)} |")
    t = [v for k, v in enc.items() if k.startswith("tokenize/")]
    if t:
        out.append(f"\nTokenization (system + user, {t[0]['label'].split('/')[1]} tokens): {t[0]['median_ms'] * 1e3:.0f} µs")
    if st:
        out.append(f"\nsentence-transformers: torch {st['torch']}, {st['threads']} threads; `encode()` incl. tokenization: "
                   + ", ".join(f"{k} tok {v['median_ms']:.1f} ms" for k, v in st["encode"].items()))
    out.append("")

# 4. auto end to end.
auto = load("auto.jsonl")
if auto:
    out.append(f"### `auto` end to end (load average at start: {load_notes.get('auto', '?')})\n")
    out.append("| run | prompt tokens | offered RPS | connections | achieved RPS | p50 / p90 / p99 ms | errors |")
    out.append("|---|---|---|---|---|---|---|")
    for r in auto:
        if "rps" not in r:
            continue
        rate = "saturation" if r["target_rps"] == 0 else f"{r['target_rps']:.0f}"
        out.append(
            f"| {r['label']} | {r['prompt_tokens']} | {rate} | {r['concurrency']} | {f(r['rps'], 1)} | "
            f"{f(r['p50_ms'])} / {f(r['p90_ms'])} / {f(r['p99_ms'])} | {r['errors']} |"
        )
    for r in auto:
        if "sources" in r:
            out.append(f"\nScore sources in the decision log: {r['sources']}")
    off = {r["target_rps"]: r for r in auto if r["label"].startswith("off/")}
    rows = []
    for r in auto:
        if r["label"].startswith("auto/distinct/rate") and r["target_rps"] in off:
            o = off[r["target_rps"]]
            rows.append(f"{r['target_rps']:.0f} RPS: +{r['p50_ms'] - o['p50_ms']:.1f} ms p50, +{r['p99_ms'] - o['p99_ms']:.1f} ms p99")
    if rows:
        out.append("\nAdded by classification + decision (auto vs classifier off, same prompts and rate): " + "; ".join(rows))
    out.append("")

# 5. Memory.
mem = [r for r in load("memory.jsonl") if r.get("label") == "memory/rss"]
if mem:
    m = mem[-1]
    out.append(f"### Memory (load average at start: {load_notes.get('memory', '?')})\n")
    out.append("| idle, model loaded | after 1st request | peak | end of run (idle) | requests | RSS slope, 2nd half of the long run |")
    out.append("|---|---|---|---|---|---|")
    slope = m["second_half_slope_kb_per_100k"]
    out.append(
        f"| {f(m['idle_start_mb'], 1)} MB | {f(m['idle_after_first_request_mb'], 1)} MB | {f(m['peak_mb'], 1)} MB | "
        f"{f(m['end_idle_mb'], 1)} MB | {m['requests']:,} | {f(slope / 1024 if slope is not None else None, 2)} MB per 100k requests |"
    )
    out.append("")

print("\n".join(out))
