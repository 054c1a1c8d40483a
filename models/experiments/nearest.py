#!/usr/bin/env python3
"""Experiment, not part of PSI: does a memory of training spans add recall?

Adds two features to train.py's blend for every span: the highest cosine
between its vector and (a) every injection span of the training data,
(b) 150,000 benign training spans drawn at random (seed 0). Everything
else is train.py's pipeline: the same pre-filter and head (trained here
again, deterministically), blend fitted on validation, gate and threshold
set on validation. It prints, for the blend without and with the memory:

  * validation, the blend fitted on one half of validation's records and
    scored on the other (both ways), recall at 1 / 1.5 / 2 % FPR on
    validation's benign tool outputs;
  * test, blend, gate and threshold from the whole of validation: recall
    at the threshold, FPRs, and recall at 1 % / 2 % of test's benign tool
    outputs.

Run with train.py's venv (`make train` makes it) from the repository root:
    /opt/mcpwarden-dev/psi-train/bin/python models/experiments/nearest.py
Takes about 8 minutes with train.py's encoder cache warm (the first run
also embeds the test split, about 3 of them). BENCHMARKS.md reports its output.
"""

import hashlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import train as T  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")
FPRS = (0.01, 0.015, 0.02)


def top1(x, bank):
    out = np.zeros(len(x), np.float32)
    for i in range(0, len(x), 8192):
        out[i:i + 8192] = (x[i:i + 8192] @ bank.T).max(1)
    return out


def fit(x, y, steps=800):
    w, b = np.zeros(x.shape[1]), np.zeros(1)
    sw = T.class_weights(y)
    opt = T.Adam([w, b], 0.05)
    for _ in range(steps):
        g = (T.sigmoid(x @ w + b[0]) - y) * sw / len(y)
        opt.step([x.T @ g, np.array([g.sum()])])
    return w, b[0]


def features(pre, head, memory):
    a, b = T.logit(pre), T.logit(head)
    cols = [a, b, a * b]
    if memory is not None:
        for m in memory:
            cols += [10 * m, m * b]
    return np.stack(cols, 1)


class Split:
    def __init__(self, tok, enc, recs, prefilter, head):
        self.recs = recs
        self.feats, x, self.labels, self.span_win, self.owner = T.prepare(tok, enc, recs)
        self.x = x.astype(np.float32)
        self.pre = T.sigmoid(T.prefilter_scores(*prefilter, self.feats))
        self.head = T.head_scores(head, self.x)
        n = len(self.owner)
        self.pre_win = T.window_max(self.span_win, n, self.pre)
        self.pos_win = T.window_max(self.span_win, n, np.array([lab == 1 for lab in self.labels], float)) > 0
        self.label = np.array([r["label"] for r in recs])
        self.kind = np.array([r["kind"] for r in recs])
        self.benign_docs = self.kind == "doc"

    def docs(self, span_scores, gate):
        n = len(self.owner)
        win = T.window_max(self.span_win, n, span_scores)
        return T.doc_scores(self.owner, len(self.recs), np.where(self.pre_win >= gate, win, 0.0))

    def recall_at(self, doc, fpr):
        return (doc[self.label == 1] > np.quantile(doc[self.benign_docs], 1 - fpr)).mean()


def main():
    np.random.seed(T.SEED)
    tok = T.make_tokenizer()
    with open(T.MODEL, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    enc = T.Encoder(f"/tmp/mcpwarden-psi-spans-{sha[:16]}.npz")
    train = T.load("train", DATA) + T.load("train-extra", DATA)
    f_tr, x_tr, l_tr, _, _ = T.prepare(tok, enc, train)
    keep = np.array([lab is not None for lab in l_tr])
    y_tr = np.array([lab or 0 for lab in l_tr], dtype=np.float64)
    pw, pb = T.train_prefilter([f for f, k in zip(f_tr, keep) if k], y_tr[keep])
    prefilter = (pw.astype(np.float16).astype(np.float64), pb)
    head = T.train_head(x_tr[keep], y_tr[keep])
    pos = x_tr[keep & (y_tr == 1)].astype(np.float32)
    negi = np.where(keep & (y_tr == 0))[0]
    neg = x_tr[np.random.default_rng(0).choice(negi, min(len(negi), 150000), replace=False)].astype(np.float32)
    print(f"memory: {len(pos)} injection spans, {len(neg)} benign spans")
    del x_tr, f_tr

    # The test split's vectors go to a cache of their own, so train.py's
    # cache never holds test windows.
    val = Split(tok, enc, T.load("val", DATA), prefilter, head)
    test = Split(tok, T.Encoder(f"/tmp/mcpwarden-psi-test-spans-{sha[:16]}.npz"), T.load("test", DATA), prefilter, head)
    mem = {id(s): (top1(s.x, pos), top1(s.x, neg)) for s in (val, test)}

    for name, use in (("blend", False), ("blend + memory", True)):
        xv = features(val.pre, val.head, mem[id(val)] if use else None)
        known = np.array([lab is not None for lab in val.labels])
        yv = np.array([lab or 0 for lab in val.labels], dtype=np.float64)
        gate = float(np.quantile(val.pre_win[val.pos_win], T.GATE_MISS))
        # Validation, two-fold: fit on half of the records, score the other.
        fold = val.owner[val.span_win] % 2
        sv = np.zeros(len(xv))
        for f in (0, 1):
            w, b = fit(xv[known & (fold == f)], yv[known & (fold == f)])
            sv[fold != f] = T.sigmoid(xv[fold != f] @ w + b)
        dv = val.docs(sv, gate)
        rv = " / ".join(f"{val.recall_at(dv, p):.4f}" for p in FPRS)
        print(f"{name}: validation (two-fold) recall at 1 / 1.5 / 2 % FPR: {rv}")
        # Test: everything fitted on the whole of validation.
        w, b = fit(xv[known], yv[known])
        dv = val.docs(T.sigmoid(xv @ w + b), gate)
        thr = max(float(np.quantile(dv[val.benign_docs], 1 - T.VAL_FPR)) + 1e-6, 0.5)
        xt = features(test.pre, test.head, mem[id(test)] if use else None)
        dt = test.docs(T.sigmoid(xt @ w + b), gate)
        hit = dt >= thr
        inj = test.label == 1
        print(f"{name}: test recall {hit[inj].mean():.4f} (direct {hit[inj & (test.kind == 'prompt')].mean():.4f}, "
              f"indirect {hit[test.kind == 'indirect'].mean():.4f}), FPR tool outputs {hit[test.benign_docs].mean():.4f}, "
              f"prompts {hit[~inj & ~test.benign_docs].mean():.4f}; recall at 1 % / 2 % test FPR "
              f"{test.recall_at(dt, 0.01):.4f} / {test.recall_at(dt, 0.02):.4f}; "
              f"AUROC {T.auroc(dt[inj], dt[~inj]):.4f}")


if __name__ == "__main__":
    main()
