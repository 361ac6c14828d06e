#!/usr/bin/env bash
# Ladder's benchmark suite (see benches/RESULTS.md for the figures and how to read them).
#
#   scripts/bench.sh [STEP...]     steps: setup proxy litellm encoder auto memory report (default: all)
#
#   proxy    Ladder (classifier off, fixed model) vs the fake upstream directly: fixed rates with
#            oha (--qps, latency corrected for coordinated omission) and saturation with wrk,
#            non-stream and stream.
#   litellm  LiteLLM proxy in front of the same fake upstream, same load.
#   encoder  criterion benches of the encoder (benches/classifier.rs), sentence-transformers on
#            the same prompts and thread count, f32 matmul GFLOP/s (the FLOP floor).
#   auto     `auto` with the classifier on: distinct 64-token prompts (and repeats) through
#            benches/loadgen.rs, at fixed rates and at saturation, vs classifier off.
#   memory   RSS of `ladder serve` (model loaded) at idle and during a long run.
#   report   print the summary tables from target/bench/results/*.jsonl.
#
# Everything listens on 127.0.0.1; every run is bounded by a duration. Results (JSON lines) go to
# target/bench/results/, logs to target/bench/logs/. Knobs: BENCH_SECS (seconds per fixed-rate
# point, default 15), BENCH_RATES (default "200 1000 2000"), MEMORY_REQUESTS (default 300000),
# LITELLM_WORKERS (default "1 2"). The machine has 2 cores shared by the load generator, the proxy
# and the fake upstream: check `uptime` first, other builds make every number worse.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
B=$ROOT/target/bench
RES=$B/results
LOGS=$B/logs
RUN=$B/run
BIN=$B/bin
mkdir -p "$RES" "$LOGS" "$RUN" "$BIN"

BENCH_SECS=${BENCH_SECS:-15}
BENCH_RATES=${BENCH_RATES:-"200 1000 2000"}
MEMORY_REQUESTS=${MEMORY_REQUESTS:-300000}
LITELLM_WORKERS=${LITELLM_WORKERS:-"1 2"}
LITELLM_VERSION=1.108.7
OHA_VERSION=1.16.0
FAKE_PORT=19100
LADDER_PORT=19101
LITELLM_PORT=19102
# Ladder's admin key (auth on, as by default): every request, to Ladder and to the direct upstream
# alike, carries it, as LiteLLM's requests carry its master key.
LADDER_KEY=sk-ladder-bench-admin
export PATH="$HOME/.cargo/bin:$PATH"

log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# ------------------------------------------------------------------------------------------------
# Processes: every one we start is recorded and killed (by pid) on exit.
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

wait_http() { # URL [seconds]
    local url=$1 secs=${2:-60} i
    for ((i = 0; i < secs * 10; i++)); do
        curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$url did not come up within ${secs}s"
}

stop_pid() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_fake() {
    port_free $FAKE_PORT || die "port $FAKE_PORT is taken"
    "$BIN/ladder" fake-provider --listen 127.0.0.1:$FAKE_PORT >"$LOGS/fake.log" 2>&1 &
    FAKE_PID=$!
    PIDS+=("$FAKE_PID")
    wait_http "http://127.0.0.1:$FAKE_PORT/healthz"
}

# Ladder config: two catalogue models on the fake upstream, m1 falling back to m2.
write_config() { # FILE CLASSIFIER(true|false) DB
    cat >"$1" <<EOF
[server]
listen = "127.0.0.1:$LADDER_PORT"

[store]
path = "$3"
${STORE_WAL_MAX_MB:+wal_max_mb = $STORE_WAL_MAX_MB}

[classifier]
enabled = $2
model_dir = "$ROOT/models/all-MiniLM-L6-v2"
heads_dir = "$ROOT/models/heads"
workers = ${CLASSIFIER_WORKERS:-0}
threads_per_worker = ${CLASSIFIER_THREADS_PER_WORKER:-1}
max_batch = ${CLASSIFIER_MAX_BATCH:-32}
${CLASSIFIER_PRECISION:+precision = \"$CLASSIFIER_PRECISION\"}

[routing]
threshold = 0.7
default_task = "chat"

[[providers]]
name = "fake"
kind = "openai"
base_url = "http://127.0.0.1:$FAKE_PORT/v1"

[[models]]
name = "m1"
provider = "fake"
input_price = 0.15
output_price = 0.6
context_window = 128000
quality = { default = 0.8 }
fallbacks = ["m2"]

[[models]]
name = "m2"
provider = "fake"
input_price = 2.5
output_price = 10.0
context_window = 128000
quality = { default = 0.9 }
EOF
}

start_ladder() { # CONFIG NAME
    port_free $LADDER_PORT || die "port $LADDER_PORT is taken"
    LADDER_ADMIN_KEY=$LADDER_KEY LADDER_LOG=${LADDER_LOG:-warn} "$BIN/ladder" serve --config "$1" >"$LOGS/ladder-$2.log" 2>&1 &
    LADDER_PID=$!
    PIDS+=("$LADDER_PID")
    wait_http "http://127.0.0.1:$LADDER_PORT/healthz" 120
}

rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }

body() { # MODEL STREAM(true|false)
    if [ "$2" = true ]; then
        printf '{"model":"%s","messages":[{"role":"user","content":"Say hello to the benchmark."}],"stream":true}' "$1"
    else
        printf '{"model":"%s","messages":[{"role":"user","content":"Say hello to the benchmark."}]}' "$1"
    fi
}

# oha at a fixed rate, latency corrected; one JSON line appended to results/$FILE.
oha_rate() { # FILE LABEL URL RATE STREAM [AUTH]
    local file=$1 label=$2 url=$3 rate=$4 stream=$5 auth=${6:-} out
    out=$RUN/oha.json
    local args=(-z "${BENCH_SECS}s" -q "$rate" --latency-correction -c 64 -m POST -T application/json
        -d "$(body m1 "$stream")" --no-tui --output-format json -o "$out")
    [ -n "$auth" ] && args+=(-H "authorization: Bearer $auth")
    # Warm-up (connections, caches), then the measured run.
    oha -z 2s -q "$rate" -c 64 -m POST -T application/json -d "$(body m1 "$stream")" --no-tui ${auth:+-H "authorization: Bearer $auth"} "$url" >/dev/null 2>&1 || true
    oha "${args[@]}" "$url" >/dev/null 2>"$LOGS/oha.err" || die "oha failed: $(cat "$LOGS/oha.err")"
    python3 - "$out" "$label" "$rate" "$stream" >>"$RES/$file" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s, lat = r["summary"], r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
ok = sum(v for k, v in codes.items() if k.startswith("2"))
# oha aborts the requests still in flight when the duration ends: not errors of the server.
errs = {k: v for k, v in r.get("errorDistribution", {}).items() if "aborted due to deadline" not in k}
total = sum(codes.values()) + sum(errs.values())
ms = lambda k: None if lat.get(k) is None else lat[k] * 1e3
print(json.dumps({"label": sys.argv[2], "tool": "oha", "target_rps": float(sys.argv[3]), "stream": sys.argv[4] == "true",
    "rps": s["requestsPerSec"], "ok_rps": s["requestsPerSec"] * (ok / total if total else 0), "requests": total, "non_2xx_or_error": total - ok,
    "p50_ms": ms("p50"), "p90_ms": ms("p90"), "p99_ms": ms("p99"), "p999_ms": ms("p99.9"), "max_ms": s["slowest"] * 1e3,
    "mean_ms": s["average"] * 1e3}))
PY
    tail -n1 "$RES/$file" >&2
}

# wrk at saturation (closed loop, 64 connections, 1 thread).
wrk_sat() { # FILE LABEL URL STREAM [AUTH] [CONNECTIONS]
    local file=$1 label=$2 url=$3 stream=$4 auth=${5:-} conns=${6:-64}
    local lua=$RUN/wrk.lua
    cat >"$lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
$([ -n "$auth" ] && echo "wrk.headers[\"Authorization\"] = \"Bearer $auth\"")
wrk.body = '$(body m1 "$stream")'
local non2xx = 0
response = function(status, headers, body) if status < 200 or status > 299 then non2xx = non2xx + 1 end end
done = function(summary, latency, requests)
  io.write(string.format("WRKJSON {\"requests\": %d, \"secs\": %f, \"p50_ms\": %f, \"p90_ms\": %f, \"p99_ms\": %f, \"max_ms\": %f, \"mean_ms\": %f, \"errors\": %d}\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3, latency.mean / 1e3, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
EOF
    wrk -t1 -c"$conns" -d3s -s "$lua" "$url" >/dev/null 2>&1 || true
    wrk -t1 -c"$conns" -d"${BENCH_SECS}s" --timeout 10s -s "$lua" "$url" >"$RUN/wrk.out" 2>&1 || die "wrk failed: $(cat "$RUN/wrk.out")"
    python3 - "$RUN/wrk.out" "$label" "$stream" "$conns" >>"$RES/$file" <<'PY'
import json, sys
line = [l for l in open(sys.argv[1]) if l.startswith("WRKJSON ")][0]
r = json.loads(line[len("WRKJSON "):])
print(json.dumps({"label": sys.argv[2], "tool": "wrk", "target_rps": 0, "stream": sys.argv[3] == "true", "connections": int(sys.argv[4]),
    "rps": r["requests"] / r["secs"], "requests": r["requests"], "non_2xx_or_error": r["errors"],
    "p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"], "p99_ms": r["p99_ms"], "max_ms": r["max_ms"], "mean_ms": r["mean_ms"]}))
PY
    tail -n1 "$RES/$file" >&2
}

load_note() { # record the machine load next to the results
    echo "{\"label\": \"load\", \"step\": \"$1\", \"uptime\": \"$(uptime | sed 's/.*load average: //')\"}" >>"$RES/load.jsonl"
    log "load average: $(uptime | sed 's/.*load average: //')"
}

# ------------------------------------------------------------------------------------------------
step_setup() {
    log "setup: model weights and SDK venv"
    scripts/setup.sh
    if ! command -v wrk >/dev/null; then
        log "installing wrk (apt)"
        apt-get install -y wrk >/dev/null
    fi
    if ! command -v oha >/dev/null; then
        log "installing oha $OHA_VERSION (cargo install)"
        cargo install oha --version "$OHA_VERSION" --locked
    fi
    if [ ! -x "$B/venv-litellm/bin/litellm" ]; then
        log "installing litellm[proxy]==$LITELLM_VERSION into target/bench/venv-litellm"
        python3 -m venv "$B/venv-litellm"
        "$B/venv-litellm/bin/pip" install --quiet "litellm[proxy]==$LITELLM_VERSION"
    fi
    # sentence-transformers: the reference venv of training/reference/ if present, else our own.
    if .venv-ref/bin/python -c "import sentence_transformers, torch" 2>/dev/null; then
        ST_PY=$ROOT/.venv-ref/bin/python
    else
        if ! "$B/venv-st/bin/python" -c "import sentence_transformers, torch" 2>/dev/null; then
            log "installing torch and sentence-transformers into target/bench/venv-st"
            python3 -m venv "$B/venv-st"
            "$B/venv-st/bin/pip" install --quiet torch sentence-transformers
        fi
        ST_PY=$B/venv-st/bin/python
    fi
    echo "$ST_PY" >"$B/st_python"
    log "building ladder and the benches (release)"
    cargo build --release -j 2
    cargo bench --no-run --bench classifier --bench loadgen -j 2 2>&1 | tee "$LOGS/bench-build.log" >&2
    # A snapshot of the binaries, so concurrent builds do not change what is measured.
    cp target/release/ladder "$BIN/ladder"
    cp "$(grep -o 'target/release/deps/loadgen-[0-9a-f]*' "$LOGS/bench-build.log" | tail -n1)" "$BIN/loadgen"
    cp "$(grep -o 'target/release/deps/classifier-[0-9a-f]*' "$LOGS/bench-build.log" | tail -n1)" "$BIN/classifier"
    log "tools: $(oha --version), $(wrk -v 2>&1 | head -n1 | cut -c1-40), litellm $LITELLM_VERSION, st python $ST_PY"
}

need_bin() { [ -x "$BIN/ladder" ] && [ -x "$BIN/loadgen" ] || die "run 'scripts/bench.sh setup' first"; }

# ------------------------------------------------------------------------------------------------
step_proxy() {
    need_bin
    load_note proxy
    : >"$RES/proxy.jsonl"
    start_fake
    write_config "$RUN/ladder-proxy.toml" false "$RUN/proxy.db"
    rm -f "$RUN"/proxy.db*
    start_ladder "$RUN/ladder-proxy.toml" proxy
    local direct=http://127.0.0.1:$FAKE_PORT/v1/chat/completions
    local ladder=http://127.0.0.1:$LADDER_PORT/v1/chat/completions
    for stream in false true; do
        for rate in $BENCH_RATES; do
            oha_rate proxy.jsonl "direct" "$direct" "$rate" "$stream" "$LADDER_KEY"
            oha_rate proxy.jsonl "ladder" "$ladder" "$rate" "$stream" "$LADDER_KEY"
        done
        wrk_sat proxy.jsonl "direct" "$direct" "$stream" "$LADDER_KEY"
        wrk_sat proxy.jsonl "ladder" "$ladder" "$stream" "$LADDER_KEY"
    done
    log "proxy: decision log rows $(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from decisions').fetchone()[0])" "$RUN/proxy.db")"
    stop_pid "$LADDER_PID"
    # The same with store.wait_for_commit = false (responses released before their record's
    # commit): how much of the added tail latency is the durable log.
    write_config "$RUN/ladder-nowait.toml" false "$RUN/nowait.db"
    sed -i 's/^\[store\]/[store]\nwait_for_commit = false/' "$RUN/ladder-nowait.toml"
    rm -f "$RUN"/nowait.db*
    start_ladder "$RUN/ladder-nowait.toml" nowait
    for rate in $BENCH_RATES; do
        oha_rate proxy.jsonl "ladder-nowait" "$ladder" "$rate" false "$LADDER_KEY"
    done
    wrk_sat proxy.jsonl "ladder-nowait" "$ladder" false "$LADDER_KEY"
    stop_pid "$LADDER_PID"
    stop_pid "$FAKE_PID"
}

# ------------------------------------------------------------------------------------------------
step_litellm() {
    need_bin
    [ -x "$B/venv-litellm/bin/litellm" ] || die "run 'scripts/bench.sh setup' first"
    load_note litellm
    : >"$RES/litellm.jsonl"
    start_fake
    cat >"$RUN/litellm.yaml" <<EOF
model_list:
  - model_name: m1
    litellm_params:
      model: openai/m1
      api_base: http://127.0.0.1:$FAKE_PORT/v1
      api_key: fake-key
  - model_name: m2
    litellm_params:
      model: openai/m2
      api_base: http://127.0.0.1:$FAKE_PORT/v1
      api_key: fake-key
router_settings:
  fallbacks: [{"m1": ["m2"]}]
litellm_settings:
  telemetry: false
  set_verbose: false
  json_logs: false
EOF
    local key=sk-bench-master-key url=http://127.0.0.1:$LITELLM_PORT/v1/chat/completions
    for workers in $LITELLM_WORKERS; do
        port_free $LITELLM_PORT || die "port $LITELLM_PORT is taken"
        # Its own session (setsid), so that the uvicorn workers can be stopped with their group.
        LITELLM_MASTER_KEY=$key LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_LOG=ERROR DISABLE_SCHEMA_UPDATE=True \
            NO_PROXY='*' HTTPS_PROXY= HTTP_PROXY= \
            setsid "$B/venv-litellm/bin/litellm" --config "$RUN/litellm.yaml" --host 127.0.0.1 --port $LITELLM_PORT \
            --num_workers "$workers" >"$LOGS/litellm-$workers.log" 2>&1 &
        local lpid=$!
        PIDS+=("$lpid")
        wait_http "http://127.0.0.1:$LITELLM_PORT/health/liveliness" 180
        curl -fsS "$url" -H "authorization: Bearer $key" -H 'content-type: application/json' -d "$(body m1 false)" >/dev/null ||
            die "litellm smoke request failed (see $LOGS/litellm-$workers.log)"
        for stream in false true; do
            for rate in $BENCH_RATES; do
                oha_rate litellm.jsonl "litellm-w$workers" "$url" "$rate" "$stream" "$key"
            done
            wrk_sat litellm.jsonl "litellm-w$workers" "$url" "$stream" "$key"
        done
        kill -TERM -- "-$lpid" 2>/dev/null || true
        stop_pid "$lpid"
        sleep 2
    done
    stop_pid "$FAKE_PID"
}

# ------------------------------------------------------------------------------------------------
step_encoder() {
    need_bin
    load_note encoder
    log "encoder: criterion (benches/classifier.rs)"
    rm -rf target/criterion/encoder_* target/criterion/candle_* target/criterion/matmul_f32 target/criterion/tokenize
    (cd "$ROOT" && "$BIN/classifier" --bench) 2>&1 | tee "$LOGS/criterion.log" | grep -E "^(encoder|candle|matmul|tokenize)|time:|thrpt:" >&2
    python3 - >"$RES/encoder.jsonl" <<'PY'
import glob, json, os
for f in sorted(glob.glob("target/criterion/*/*/new/estimates.json")):
    parts = f.split(os.sep)
    group, name = parts[-4], parts[-3]
    if not (group.startswith(("encoder_", "candle_")) or group in ("matmul_f32", "tokenize")):
        continue
    e = json.load(open(f))
    bench = json.load(open(f.replace("estimates.json", "benchmark.json")))
    thr = bench.get("throughput") or {}
    flops = thr.get("Elements")
    out = {"label": f"{group}/{name}", "median_ms": e["median"]["point_estimate"] / 1e6, "mean_ms": e["mean"]["point_estimate"] / 1e6}
    if flops:
        out["flops"] = flops
        out["gflops"] = flops / (e["median"]["point_estimate"] / 1e9) / 1e9
    print(json.dumps(out))
PY
    cat "$RES/encoder.jsonl" >&2
    local st_py
    st_py=$(cat "$B/st_python" 2>/dev/null || echo "$ROOT/.venv-ref/bin/python")
    local threads=${ENCODER_THREADS:-$(nproc)}
    log "encoder: sentence-transformers ($st_py, $threads threads)"
    "$st_py" benches/st_compare.py "$ROOT/models/all-MiniLM-L6-v2" "$threads" "$RES/st.json" >"$LOGS/st.log" 2>&1 ||
        die "sentence-transformers run failed: $(tail -n 20 "$LOGS/st.log")"
}

# ------------------------------------------------------------------------------------------------
loadgen() { # FILE LABEL [loadgen args...]
    local file=$1 label=$2
    shift 2
    LOADGEN_THREADS=1 "$BIN/loadgen" --url "http://127.0.0.1:$LADDER_PORT/v1/chat/completions" --auth "$LADDER_KEY" \
        --model-dir "$ROOT/models/all-MiniLM-L6-v2" --label "$label" --out "$RES/$file" "$@" >/dev/null 2>"$LOGS/loadgen.err" ||
        die "loadgen failed: $(cat "$LOGS/loadgen.err")"
    tail -n1 "$RES/$file" >&2
}

score_sources() { # DB -> counts of score sources in the decision log
    python3 - "$1" <<'PY'
import json, sqlite3, sys
rows = sqlite3.connect(sys.argv[1]).execute(
    "select json_extract(record, '$.scores.source'), count(*) from decisions group by 1").fetchall()
print(json.dumps({str(k): v for k, v in rows}))
PY
}

step_auto() {
    need_bin
    load_note auto
    : >"$RES/auto.jsonl"
    start_fake
    local secs=${AUTO_SECS:-20} seed=$RANDOM
    # Baseline: the same prompts, classifier off, fixed model.
    write_config "$RUN/ladder-off.toml" false "$RUN/auto-off.db"
    rm -f "$RUN"/auto-off.db*
    start_ladder "$RUN/ladder-off.toml" auto-off
    for rate in ${AUTO_RATES:-10 25 50}; do
        loadgen auto.jsonl "off/m1/rate" --model m1 --prompt-tokens 64 --rate "$rate" --concurrency 64 --duration "$secs" --seed $((seed + rate))
    done
    stop_pid "$LADDER_PID"
    # Classifier on, `auto`.
    write_config "$RUN/ladder-auto.toml" true "$RUN/auto.db"
    rm -f "$RUN"/auto.db*
    start_ladder "$RUN/ladder-auto.toml" auto
    curl -fsS "http://127.0.0.1:$LADDER_PORT/healthz" >&2
    echo >&2
    for rate in ${AUTO_RATES:-10 25 50}; do
        loadgen auto.jsonl "auto/distinct/rate" --model auto --prompt-tokens 64 --rate "$rate" --concurrency 64 --duration "$secs" --seed $((seed + 1000 + rate))
    done
    for conns in 8 32 64; do
        loadgen auto.jsonl "auto/distinct/saturation" --model auto --prompt-tokens 64 --rate 0 --concurrency "$conns" --duration "$secs" --seed $((seed + 2000 + conns))
    done
    # Repeats: 64 distinct prompts cycled, so after the first round the embedding cache answers
    # (the first round is the warm-up).
    loadgen auto.jsonl "auto/repeat64/saturation" --model auto --prompt-tokens 64 --distinct 64 --rate 0 --concurrency 64 --duration "$secs" \
        --warmup 10 --seed $((seed + 3000))
    for p in 16 128; do
        loadgen auto.jsonl "auto/distinct-${p}tok/saturation" --model auto --prompt-tokens $p --rate 0 --concurrency 32 --duration "$secs" --seed $((seed + 4000 + p))
    done
    echo "{\"label\": \"auto/score_sources\", \"sources\": $(score_sources "$RUN/auto.db")}" >>"$RES/auto.jsonl"
    tail -n1 "$RES/auto.jsonl" >&2
    stop_pid "$LADDER_PID"
    stop_pid "$FAKE_PID"
}

# ------------------------------------------------------------------------------------------------
step_memory() {
    need_bin
    load_note memory
    : >"$RES/memory.jsonl"
    local csv=$RES/memory-rss.csv
    start_fake
    write_config "$RUN/ladder-mem.toml" true "$RUN/mem.db"
    rm -f "$RUN"/mem.db*
    start_ladder "$RUN/ladder-mem.toml" memory
    sleep 2
    local idle_start
    idle_start=$(rss_kb "$LADDER_PID")
    # One request of each kind faults in the weights and warms the allocator.
    curl -fsS "http://127.0.0.1:$LADDER_PORT/v1/chat/completions" -H "authorization: Bearer $LADDER_KEY" -H 'content-type: application/json' \
        -d "$(body auto false)" >/dev/null
    sleep 1
    local idle_warm
    idle_warm=$(rss_kb "$LADDER_PID")
    echo "t_s,phase,requests_done,rss_kb" >"$csv"
    local t0=$SECONDS
    sampler() {
        while kill -0 "$LADDER_PID" 2>/dev/null; do
            local n
            n=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select max(seq) from decisions').fetchone()[0] or 0)" "$RUN/mem.db" 2>/dev/null || echo 0)
            echo "$((SECONDS - t0)),$(cat "$RUN/mem.phase" 2>/dev/null),$n,$(rss_kb "$LADDER_PID")" >>"$csv"
            sleep 5
        done
    }
    echo distinct >"$RUN/mem.phase"
    sampler &
    local spid=$!
    PIDS+=("$spid")
    # Phase 1: distinct prompts (encoder, embedding cache filling to its 4096 entries).
    loadgen memory.jsonl "memory/distinct" --model auto --prompt-tokens 64 --rate 0 --concurrency 32 --duration "${MEMORY_DISTINCT_SECS:-60}" --warmup 0 --seed $RANDOM
    # Phase 2: the long run, repeated prompts (cache hits; the proxy path, the log, the allocator),
    # non-stream and stream, until MEMORY_REQUESTS requests in total.
    echo repeat >"$RUN/mem.phase"
    local done_n=0 target=$MEMORY_REQUESTS
    while [ "$done_n" -lt "$target" ]; do
        local lua=$RUN/mem.lua
        cat >"$lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $LADDER_KEY"
local bodies = {'$(body auto false)', '$(body m1 true)', '$(body m1 false)'}
local i = 0
request = function() i = i + 1; return wrk.format(nil, nil, nil, bodies[(i % 3) + 1]) end
EOF
        wrk -t1 -c32 -d30s --timeout 10s -s "$lua" "http://127.0.0.1:$LADDER_PORT/v1/chat/completions" >"$RUN/mem-wrk.out" 2>&1 || true
        done_n=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from decisions').fetchone()[0])" "$RUN/mem.db")
        log "memory: $done_n requests logged, rss $(rss_kb "$LADDER_PID") kB"
    done
    echo idle >"$RUN/mem.phase"
    sleep 10
    local end_idle
    end_idle=$(rss_kb "$LADDER_PID")
    stop_pid "$spid"
    python3 - "$csv" "$idle_start" "$idle_warm" "$end_idle" "$done_n" >>"$RES/memory.jsonl" <<'PY'
import csv, json, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]))]
rep = [r for r in rows if r["phase"] == "repeat"]
rss = [int(r["rss_kb"]) for r in rows]
half = rep[len(rep) // 2:] if rep else []
def slope(rs):  # kB per 100k requests over the second half of the long run
    if len(rs) < 2: return None
    dn = int(rs[-1]["requests_done"]) - int(rs[0]["requests_done"])
    return (int(rs[-1]["rss_kb"]) - int(rs[0]["rss_kb"])) / dn * 1e5 if dn else None
print(json.dumps({"label": "memory/rss", "idle_start_mb": int(sys.argv[2]) / 1024, "idle_after_first_request_mb": int(sys.argv[3]) / 1024,
    "peak_mb": max(rss) / 1024 if rss else None, "end_idle_mb": int(sys.argv[4]) / 1024, "requests": int(sys.argv[5]),
    "second_half_slope_kb_per_100k": slope(half),
    "repeat_first_mb": int(rep[0]["rss_kb"]) / 1024 if rep else None, "repeat_last_mb": int(rep[-1]["rss_kb"]) / 1024 if rep else None}))
PY
    tail -n1 "$RES/memory.jsonl" >&2
    stop_pid "$LADDER_PID"
    stop_pid "$FAKE_PID"
}

# ------------------------------------------------------------------------------------------------
step_report() {
    python3 benches/report.py "$RES"
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(setup proxy litellm encoder auto memory report)
for s in "${steps[@]}"; do
    case $s in
    setup | proxy | litellm | encoder | auto | memory | report) "step_$s" ;;
    *) die "unknown step '$s' (setup proxy litellm encoder auto memory report)" ;;
    esac
done
