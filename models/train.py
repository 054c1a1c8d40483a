#!/usr/bin/env python3
"""Trains PSI's two small models and writes models/psi-head.bin.

PSI scores text in windows of the encoder's tokens (126 tokens plus [CLS]
and [SEP], a stride of 96, so no injection falls between two windows). Each
window goes through:

  1. the pre-filter: logistic regression over hashed word unigrams and
     bigrams (microseconds; features defined identically in
     agent/src/inspect/prefilter.rs), applied to every span of SPAN tokens
     (stride SPAN_STRIDE) of the window. A window whose best span scores
     below `gate` is benign without the transformer.
  2. the head: an MLP over L2-normalised means of all-MiniLM-L6-v2's token
     states (int8 ONNX), one per span and one for the whole window, for
     the windows the gate lets through. An injection of twenty words in a
     page of man text is diluted in the window's mean, not in its span's.

  3. the blend: a span's score is a logistic regression over the logits
     of both (and their product), fitted on the validation split: the
     pre-filter knows the words of attacks, the head their meaning.

A message's score is the highest span score (0 for a gated window; 0 for
a plain name, which the proxy does not score either). The
gate is set on the validation split so that it keeps 98 % of the injection
windows (99 % let twice as many benign windows through for the same
recall); the alert threshold so that at most 1.5 % of the benign tool outputs
in validation score above it. The test split is never read here: the
numbers come from `mcpwarden scan --eval models/data/test.jsonl`.

Deterministic: fixed seeds, full-batch optimisation for the pre-filter and
seeded mini-batches for the head, data from
build_data.py and augment.py. Embeddings are cached in --cache (keyed by
the token ids; the default file is named by the encoder's sha256, so a new
encoder starts a new cache).
"""

import argparse
import hashlib
import json
import os
import struct

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from build_data import is_plain_name

MODELS = "/opt/mcpwarden-dev/models"
MODEL = f"{MODELS}/encoder/model.onnx"
HERE = os.path.dirname(os.path.abspath(__file__))
WINDOW = 126
STRIDE = 96
BUCKETS = 1 << 17
SPAN = 24
SPAN_STRIDE = 12
HIDDEN = 256
SEED = 20261122
# The alert threshold lets this share of validation's benign tool outputs
# through: the target allows 2 % on the test split, this keeps a margin.
VAL_FPR = 0.015
# The gate lets this share of validation's injection windows fall below it.
# At 2 % it passes half as many benign windows to the transformer as at
# 1 %, for the same validation recall (0.9540 against 0.9527).
GATE_MISS = 0.02
# The head's weight of a benign description or word span over other
# benign spans (they are 2.8 % of them: 10,545 of 380,373). At 1, the
# head of stop 30's encoder flagged 3.7 % of validation's descriptions of
# up to four words; at 4, 1.6 %, for a validation recall at 2 % FPR of
# 96.95 % instead of 97.04 % (BENCHMARKS.md, stop 30).
SHORT_BENIGN_WEIGHT = 4.0


# ------------------------------------------------------------- features


def fnv1a(data):
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def words(text):
    """ASCII-lowercased runs of ASCII letters and digits; everything else
    separates words. Mirrors prefilter.rs."""
    out, cur = [], []
    for ch in text:
        if ch.isascii() and ch.isalnum():
            cur.append(ch.lower())
        elif cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out


def features(text):
    w = words(text)
    feats = {fnv1a(b"u:" + x.encode()) % BUCKETS for x in w}
    feats.update(fnv1a(b"b:" + a.encode() + b" " + b.encode()) % BUCKETS for a, b in zip(w, w[1:]))
    return np.array(sorted(feats), dtype=np.int64)


# -------------------------------------------------------------- windows


def make_tokenizer():
    tok = Tokenizer.from_file(f"{MODELS}/encoder/tokenizer.json")
    tok.no_truncation()
    tok.no_padding()
    return tok


def windows(tok, text):
    """[(first, last token index (exclusive), char start, char end, ids)]"""
    enc = tok.encode(text, add_special_tokens=False)
    ids, offs = enc.ids, enc.offsets
    out, start = [], 0
    while start < len(ids):
        end = min(start + WINDOW, len(ids))
        out.append((start, end, offs[start][0], offs[end - 1][1], ids[start:end], offs[start:end]))
        if end == len(ids):
            break
        start += STRIDE
    return out


def spans(n):
    """Token ranges [a, b) of a window of n content tokens that get their own
    vector: each SPAN-token span, SPAN_STRIDE apart (the last one ends at n),
    then the whole window."""
    out, a = [], 0
    while True:
        b = min(a + SPAN, n)
        out.append((a, b))
        if b == n:
            break
        a += SPAN_STRIDE
    if n > SPAN:
        out.append((0, n))
    return out


def span_label(rec, lo, hi, tok_span):
    """Label of tokens [lo, hi) of a record (document coordinates)."""
    if rec["kind"] != "indirect":
        return rec["label"]
    a, b = tok_span
    covered = max(0, min(b, hi) - max(a, lo))
    if covered == 0:
        return 0
    if covered >= 0.6 * (hi - lo) or covered >= 0.6 * (b - a):
        return 1
    return None


def token_span(tok, rec):
    s, e = rec["span"]
    enc = tok.encode(rec["text"], add_special_tokens=False)
    idx = [i for i, (a, b) in enumerate(enc.offsets) if b > s and a < e]
    return (idx[0], idx[-1] + 1) if idx else (0, 0)


class Encoder:
    def __init__(self, cache):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        self.sess = ort.InferenceSession(MODEL, opts, providers=["CPUExecutionProvider"])
        self.cache_path = cache
        self.cache = {}
        if cache and os.path.exists(cache):
            data = np.load(cache, allow_pickle=True)
            self.cache = dict(zip(data["keys"].tolist(), data["vecs"]))

    def embed(self, id_lists):
        """Per window: an array (spans x 384) of L2-normalised span means.

        Each window is its own run, as in the Rust encoder: the encoder
        quantises activations with one scale per run, so a window batched
        with others (or with padding) would get other states."""
        keys = [hashlib.sha1(np.array(ids, dtype=np.int32).tobytes()).hexdigest() for ids in id_lists]
        todo = list({k: ids for k, ids in zip(keys, id_lists) if k not in self.cache}.items())
        for i, (k, toks) in enumerate(todo):
            ids = np.array([[101] + list(toks) + [102]], dtype=np.int64)
            (hidden,) = self.sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                                             "token_type_ids": np.zeros_like(ids)})
            states = hidden[0, 1:len(toks) + 1]  # content tokens only
            self.cache[k] = np.stack([unit(states[a:b].mean(0)) for a, b in spans(len(toks))]).astype(np.float16)
            if i % 3200 == 0:
                print(f"  embedded {i}/{len(todo)}", flush=True)
        if todo and self.cache_path:
            np.savez(self.cache_path, keys=np.array(list(self.cache)), vecs=np.array(list(self.cache.values()), dtype=object))
        return [self.cache[k].astype(np.float32) for k in keys]


def unit(v):
    return v / max(np.linalg.norm(v), 1e-12)


# ------------------------------------------------------------- training


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))


class Adam:
    def __init__(self, params, lr):
        self.p, self.lr, self.t = params, lr, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads):
        self.t += 1
        for p, g, m, v in zip(self.p, grads, self.m, self.v):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            p -= self.lr * (m / (1 - 0.9**self.t)) / (np.sqrt(v / (1 - 0.999**self.t)) + 1e-8)


def class_weights(y):
    pos = y.mean()
    return np.where(y == 1, 0.5 / pos, 0.5 / (1 - pos))


def prefilter_scores(w, b, feats):
    return np.array([(w[f].sum() / np.sqrt(max(len(f), 1))) + b for f in feats], dtype=np.float64)


def train_prefilter(feats, y, epochs=1600, l2=1e-6):
    lens = np.array([len(f) for f in feats])
    flat = np.concatenate(feats)
    rows = np.repeat(np.arange(len(feats)), lens)
    scale = 1.0 / np.sqrt(np.maximum(lens, 1))
    w = np.zeros(BUCKETS)
    b = np.zeros(1)
    sw = class_weights(y)
    opt = Adam([w, b], 0.05)
    for _ in range(epochs):
        z = np.bincount(rows, weights=w[flat], minlength=len(feats)) * scale + b[0]
        g = (sigmoid(z) - y) * sw / len(y)
        gw = np.bincount(flat, weights=np.repeat(g * scale, lens), minlength=BUCKETS) + l2 * w
        opt.step([gw, np.array([g.sum()])])
    return w, b[0]


def train_head(x, y, weight, epochs=20, batch=1024, lr=1e-3, l2=1e-5):
    """Mini-batch Adam in float32, each example's class weight times its
    `weight`; the batches come from a seeded permutation, so a rerun gives
    the same weights."""
    rng = np.random.default_rng(SEED)
    x = x.astype(np.float32)
    y = y.astype(np.float32)
    w1 = rng.normal(0, np.sqrt(2 / x.shape[1]), (x.shape[1], HIDDEN)).astype(np.float32)
    b1 = np.zeros(HIDDEN, dtype=np.float32)
    w2 = rng.normal(0, np.sqrt(1 / HIDDEN), HIDDEN).astype(np.float32)
    b2 = np.zeros(1, dtype=np.float32)
    sw = class_weights(y).astype(np.float32) * weight.astype(np.float32)
    opt = Adam([w1, b1, w2, b2], lr)
    for _ in range(epochs):
        perm = rng.permutation(len(y))
        for i in range(0, len(y), batch):
            idx = perm[i:i + batch]
            xb = x[idx]
            h = np.maximum(xb @ w1 + b1, 0)
            z = h @ w2 + b2[0]
            g = (sigmoid(z) - y[idx]) * sw[idx] / len(idx)
            gh = np.outer(g, w2) * (h > 0)
            opt.step([xb.T @ gh + l2 * w1, gh.sum(0), h.T @ g + l2 * w2, np.array([g.sum()], dtype=np.float32)])
    return w1, b1, w2, b2[0]


def head_scores(p, x):
    w1, b1, w2, b2 = p
    return sigmoid(np.maximum(x @ w1 + b1, 0) @ w2 + b2)


def logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def blend_features(pre, head):
    a, b = logit(pre), logit(head)
    return np.stack([a, b, a * b], 1)


def fit_blend(pre, head, y, steps=500):
    """[w_pre, w_head, w_product, bias]"""
    x = blend_features(pre, head)
    w = np.zeros(3)
    b = np.zeros(1)
    sw = class_weights(y)
    opt = Adam([w, b], 0.05)
    for _ in range(steps):
        g = (sigmoid(x @ w + b[0]) - y) * sw / len(y)
        opt.step([x.T @ g, np.array([g.sum()])])
    return np.concatenate([w, b])


def blended(blend, pre, head):
    return sigmoid(blend_features(pre, head) @ blend[:3] + blend[3])


# --------------------------------------------------------------- driver


def load(split, data_dir):
    with open(os.path.join(data_dir, f"{split}.jsonl")) as f:
        return [json.loads(line) for line in f]


def prepare(tok, enc, recs):
    """Per span: pre-filter features, vector, label, window index; and the
    record index of each window."""
    feats, labels, span_win, ids, win_owner = [], [], [], [], []
    for i, rec in enumerate(recs):
        tspan = token_span(tok, rec) if rec["kind"] == "indirect" else None
        for w in windows(tok, rec["text"]):
            offs = w[5]
            for a, b in spans(len(w[4])):
                feats.append(features(rec["text"][offs[a][0]:offs[b - 1][1]]))
                labels.append(span_label(rec, w[0] + a, w[0] + b, tspan))
                span_win.append(len(ids))
            ids.append(w[4])
            win_owner.append(i)
    vecs = np.concatenate(enc.embed(ids))
    assert len(vecs) == len(feats)
    return feats, vecs, labels, np.array(span_win), np.array(win_owner)


def window_max(span_win, n, scores):
    out = np.zeros(n)
    np.maximum.at(out, span_win, scores)
    return out


def doc_scores(owner, n, win_scores):
    out = np.zeros(n)
    np.maximum.at(out, owner, win_scores)
    return out


def auroc(pos, neg):
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    ranks[order] = np.arange(1, len(allv) + 1)
    for v in np.unique(allv):  # average ties
        m = allv == v
        ranks[m] = ranks[m].mean()
    return (ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def write_weights(path, meta, arrays):
    """MWPSI001, u32 header length, JSON header, then each array
    little-endian in header order (f16 for the pre-filter, f32 else)."""
    body = b""
    meta["arrays"] = []
    for name, arr, dtype in arrays:
        data = np.ascontiguousarray(arr, dtype=dtype).astype(np.dtype(dtype).newbyteorder("<")).tobytes()
        meta["arrays"].append({"name": name, "dtype": np.dtype(dtype).name, "len": int(np.size(arr))})
        body += data
    header = json.dumps(meta, sort_keys=True).encode()
    with open(path, "wb") as f:
        f.write(b"MWPSI001" + struct.pack("<I", len(header)) + header + body)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(HERE, "data"))
    ap.add_argument("--cache", help="default: /tmp/mcpwarden-psi-spans-<encoder sha256 prefix>.npz")
    ap.add_argument("--out", default=os.path.join(HERE, "psi-head.bin"))
    args = ap.parse_args()
    np.random.seed(SEED)
    with open(MODEL, "rb") as f:
        model_sha256 = hashlib.sha256(f.read()).hexdigest()
    tok = make_tokenizer()
    enc = Encoder(args.cache or f"/tmp/mcpwarden-psi-spans-{model_sha256[:16]}.npz")

    train, val = load("train", args.data), load("val", args.data)
    # augment.py's extra indirect injections (built from train.jsonl only).
    if os.path.exists(os.path.join(args.data, "train-extra.jsonl")):
        train += load("train-extra", args.data)
    print(f"train {len(train)} records, val {len(val)}")
    f_tr, x_tr, l_tr, w_tr, o_tr = prepare(tok, enc, train)
    f_va, x_va, l_va, w_va, o_va = prepare(tok, enc, val)
    keep = np.array([lab is not None for lab in l_tr])
    y_tr = np.array([lab or 0 for lab in l_tr], dtype=np.float64)
    print(f"train spans {keep.sum()} ({int(y_tr[keep].sum())} injection), val spans {len(l_va)}")

    pw, pb = train_prefilter([f for f, k in zip(f_tr, keep) if k], y_tr[keep])
    pw = pw.astype(np.float16).astype(np.float64)  # as stored
    short_benign = np.array([r["kind"] in ("description", "word") and r["label"] == 0 for r in train])[o_tr[w_tr]]
    head = train_head(x_tr[keep], y_tr[keep], np.where(short_benign[keep], SHORT_BENIGN_WEIGHT, 1.0))

    n_win = len(o_va)
    pre_span = sigmoid(prefilter_scores(pw, pb, f_va))
    head_span = head_scores(head, x_va)
    known = np.array([lab is not None for lab in l_va])
    y_va = np.array([lab or 0 for lab in l_va], dtype=np.float64)
    blend = fit_blend(pre_span[known], head_span[known], y_va[known])
    span_score = blended(blend, pre_span, head_span)
    pre_win = window_max(w_va, n_win, pre_span)
    head_win = window_max(w_va, n_win, span_score)
    # Windows holding an injection: those with an injection span.
    pos_win = window_max(w_va, n_win, np.array([lab == 1 for lab in l_va], dtype=float)) > 0
    gate = float(np.quantile(pre_win[pos_win], GATE_MISS))
    gated = np.where(pre_win >= gate, head_win, 0.0)
    doc = doc_scores(o_va, len(val), gated)
    doc[np.array([is_plain_name(r["text"]) for r in val])] = 0.0
    label = np.array([r["label"] for r in val])
    benign_docs = np.array([r["kind"] == "doc" for r in val])
    threshold = float(np.quantile(doc[benign_docs], 1 - VAL_FPR)) + 1e-6
    threshold = max(threshold, 0.5)
    recall = (doc[label == 1] >= threshold).mean()
    kinds = np.array([r["kind"] for r in val])
    recall_ind = (doc[kinds == "indirect"] >= threshold).mean()
    fpr_docs = (doc[benign_docs] >= threshold).mean()
    fpr_prompts = (doc[(label == 0) & (kinds == "prompt")] >= threshold).mean()
    # One- and two-word strings: not in the threshold's FPR, reported apart.
    fpr_words = (doc[kinds == "word"] >= threshold).mean()
    fpr_descriptions = (doc[kinds == "description"] >= threshold).mean()
    share = (pre_win >= gate)[~pos_win].mean()
    print(f"val: gate {gate:.4f} (passes {share:.1%} of benign windows), threshold {threshold:.4f}")
    print(f"val: recall {recall:.4f} (indirect {recall_ind:.4f}), FPR tool outputs {fpr_docs:.4f}, FPR prompts {fpr_prompts:.4f}, words {fpr_words:.4f}, descriptions {fpr_descriptions:.4f}, "
          f"AUROC {auroc(doc[label == 1], doc[label == 0]):.4f}")

    meta = {
        "format": 1,
        "encoder": {"model_sha256": model_sha256, "dim": 384},
        "window": WINDOW, "stride": STRIDE, "span": SPAN, "span_stride": SPAN_STRIDE,
        "buckets": BUCKETS, "hidden": HIDDEN,
        "prefilter_bias": float(pb), "gate": gate, "threshold": threshold,
        "blend": [float(v) for v in blend],
        "trained_on": {"train_records": len(train), "train_spans": int(keep.sum()), "seed": SEED},
    }
    write_weights(args.out, meta, [
        ("prefilter", pw, np.float16),
        ("w1", head[0], np.float32), ("b1", head[1], np.float32),
        ("w2", head[2], np.float32), ("b2", np.array([head[3]]), np.float32),
    ])
    # Parity fixture: the Rust side must give these span scores.
    fixture = []
    for i in range(0, len(val), max(1, len(val) // 24)):
        wins = np.where(o_va == i)[0]
        idx = np.where(np.isin(w_va, wins))[0]
        fixture.append({"text": val[i]["text"], "prefilter": pre_span[idx].tolist(), "head": head_span[idx].tolist(),
                        "score": span_score[idx].tolist()})
    with open(os.path.join(HERE, "parity.jsonl"), "w") as f:
        for r in fixture:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    with open(os.path.join(HERE, "train-metrics.json"), "w") as f:
        json.dump({"val": {"recall": recall, "recall_indirect": recall_ind, "fpr_tool_outputs": fpr_docs, "fpr_prompts": fpr_prompts, "fpr_words": fpr_words, "fpr_descriptions": fpr_descriptions,
                           "auroc": auroc(doc[label == 1], doc[label == 0]), "gate": gate,
                           "gate_pass_benign_windows": share, "threshold": threshold}}, f, indent=2, sort_keys=True)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
