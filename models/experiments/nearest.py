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
from experiments.common import Scored, memory, report, top1  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")


class Split(Scored):
    def __init__(self, tok, enc, recs, prefilter, head):
        feats, x, labels, span_win, owner = T.prepare(tok, enc, recs)
        self.x = x.astype(np.float32)
        pre = T.sigmoid(T.prefilter_scores(*prefilter, feats))
        super().__init__(recs, labels, span_win, owner, pre, T.head_scores(head, self.x))


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
    pos, neg = memory(x_tr, l_tr)
    print(f"memory: {len(pos)} injection spans, {len(neg)} benign spans")
    del x_tr, f_tr

    # The test split's vectors go to a cache of their own, so train.py's
    # cache never holds test windows.
    val = Split(tok, enc, T.load("val", DATA), prefilter, head)
    test = Split(tok, T.Encoder(f"/tmp/mcpwarden-psi-test-spans-{sha[:16]}.npz"), T.load("test", DATA), prefilter, head)
    report("blend", val, test)
    report("blend + memory", val, test, (top1(val.x, pos), top1(val.x, neg)), (top1(test.x, pos), top1(test.x, neg)))


if __name__ == "__main__":
    main()
