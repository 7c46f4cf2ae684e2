#!/usr/bin/env bash
# Measures each page-enhancement step (ocr.preprocess.*) on the handwriting dev set and on its
# degraded copies, with `examiner eval-ocr`, one JSON report per (set, steps) in OUT.
#
#   python3 scripts/degrade_ocr_set.py ../shared/data/handwriting-dev /tmp/hw-degraded
#   scripts/eval_enhance.sh path/to/examiner ../shared/data/handwriting-dev /tmp/hw-degraded /tmp/hw-eval
#   python3 scripts/eval_enhance_table.py /tmp/hw-eval
#
# STEPS (environment) lists the step sets to try, space-separated, each a `+`-joined list of
# perspective, lighting, deskew, denoise, or `none`; lighting and denoise may be written
# `lighting:auto`, `denoise:auto` (on only for pages that measure as needing them).
# ENGINES the engines (default ppocr,auto).
# Needs the PP-OCR models (EXAMINER_MODELS_DIR) and OMP_THREAD_LIMIT=1 for Tesseract.
set -euo pipefail
bin=$1 dev=$2 degraded=$3 out=$4
steps=${STEPS:-"none perspective lighting deskew denoise"}
engines=${ENGINES:-ppocr,auto}
mkdir -p "$out"
sets=("clean:$dev")
for kind in skew shadow perspective noise photo; do
    if [[ -d $degraded/$kind ]]; then sets+=("$kind:$degraded/$kind"); fi
done
for entry in "${sets[@]}"; do
    name=${entry%%:*} dir=${entry#*:}
    for s in $steps; do
        report=$out/${name}_${s}.json
        if [[ -s $report ]]; then continue; fi
        vars=()
        for step in perspective lighting deskew denoise; do
            if [[ "+$s+" == *"+$step:auto+"* ]]; then on=auto
            elif [[ "+$s+" == *"+$step+"* ]]; then on=true
            else on=false; fi
            vars+=("EXAMINER_OCR__PREPROCESS__${step^^}=$on")
        done
        echo "== $name $s" >&2
        env "${vars[@]}" EXAMINER_OCR_THREADS=1 "$bin" eval-ocr --data "$dir" --engine "$engines" \
            --out "$report.tmp" > /dev/null
        mv "$report.tmp" "$report"
    done
done
