#!/usr/bin/env python3
"""Prints the Markdown table of the reports `scripts/eval_enhance.sh` wrote: CER / WER and
seconds per page for each data set, enhancement steps and engine. Standard library only.

    python3 scripts/eval_enhance_table.py /tmp/hw-eval
"""
import glob
import json
import os
import sys

SETS = ["clean", "skew", "shadow", "perspective", "noise", "photo"]


def main():
    folder = sys.argv[1]
    rows = {}
    for path in glob.glob(os.path.join(folder, "*.json")):
        name = os.path.basename(path)[: -len(".json")]
        data_set, steps = name.split("_", 1)
        reports = json.load(open(path))
        if isinstance(reports, dict):
            reports = [reports]
        for r in reports:
            rows[(data_set, steps, r["engine"])] = r
    engines = sorted({k[2] for k in rows}, key=lambda e: (e != "ppocr", e))
    print("| pages | steps | " + " | ".join(f"{e} CER / WER (s/page)" for e in engines) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in engines) + " |")
    order = lambda s: (s != "none", s.count("+"), s)
    for data_set in SETS:
        steps = sorted({k[1] for k in rows if k[0] == data_set}, key=order)
        for s in steps:
            cells = []
            for e in engines:
                r = rows.get((data_set, s, e))
                cells.append(
                    f"{100 * r['cer']:.1f}% / {100 * r['wer']:.1f}% ({r['seconds_per_page']:.2f})"
                    if r
                    else "-"
                )
            print(f"| {data_set} | {s} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
