"""What the experiments share: a split's spans scored as train.py scores
them, and the blend's logistic regression over any number of features."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import train as T  # noqa: E402


def fit(x, y, steps=800):
    """Class-weighted logistic regression: (weights, bias)."""
    w, b = np.zeros(x.shape[1]), np.zeros(1)
    sw = T.class_weights(y)
    opt = T.Adam([w, b], 0.05)
    for _ in range(steps):
        g = (T.sigmoid(x @ w + b[0]) - y) * sw / len(y)
        opt.step([x.T @ g, np.array([g.sum()])])
    return w, b[0]


class Scored:
    """A split's spans (train.prepare's order) with pre-filter and head
    scores; message scores through the gate, recall at an FPR."""

    def __init__(self, recs, labels, span_win, owner, pre, head):
        assert len(pre) == len(head) == len(labels)
        self.recs, self.labels, self.span_win, self.owner = recs, labels, span_win, owner
        self.pre, self.head = pre, head
        n = len(owner)
        self.pre_win = T.window_max(span_win, n, pre)
        self.pos_win = T.window_max(span_win, n, np.array([lab == 1 for lab in labels], float)) > 0
        self.label = np.array([r["label"] for r in recs])
        self.kind = np.array([r["kind"] for r in recs])
        self.benign_docs = self.kind == "doc"

    def features(self, extra=()):
        """The blend's features, then for each extra per-span value m:
        10 m and m times the head's logit."""
        a, b = T.logit(self.pre), T.logit(self.head)
        cols = [a, b, a * b]
        for m in extra:
            cols += [10 * m, m * b]
        return np.stack(cols, 1)

    def docs(self, span_scores, gate):
        win = T.window_max(self.span_win, len(self.owner), span_scores)
        return T.doc_scores(self.owner, len(self.recs), np.where(self.pre_win >= gate, win, 0.0))

    def recall_at(self, doc, fpr):
        return (doc[self.label == 1] > np.quantile(doc[self.benign_docs], 1 - fpr)).mean()


def memory(x, labels):
    """The memory's two banks, as float32 rows of x: every injection span,
    and 150,000 benign spans drawn with seed 0 (labels None: neither)."""
    lab = np.array([-1 if v is None else v for v in labels])
    benign = np.where(lab == 0)[0]
    pick = np.random.default_rng(0).choice(benign, min(len(benign), 150000), replace=False)
    return x[lab == 1].astype(np.float32), x[pick].astype(np.float32)


def top1(x, bank):
    """Each row's highest cosine to the bank (rows of both unit length)."""
    out = np.zeros(len(x), np.float32)
    for i in range(0, len(x), 8192):
        out[i:i + 8192] = (x[i:i + 8192] @ bank.T).max(1)
    return out


def report(name, val, test=None, val_extra=(), test_extra=()):
    """Validation: the blend fitted on half of its records, scored on the
    other half, both ways; recall at 1 / 1.5 / 2 % FPR. Test (if given):
    blend, gate and threshold fitted on the whole of validation."""
    known = np.array([lab is not None for lab in val.labels])
    yv = np.array([lab or 0 for lab in val.labels], dtype=np.float64)
    gate = float(np.quantile(val.pre_win[val.pos_win], T.GATE_MISS))
    xv = val.features(val_extra)
    fold = val.owner[val.span_win] % 2
    sv = np.zeros(len(xv))
    for f in (0, 1):
        w, b = fit(xv[known & (fold == f)], yv[known & (fold == f)])
        sv[fold != f] = T.sigmoid(xv[fold != f] @ w + b)
    dv = val.docs(sv, gate)
    print(f"{name}: validation (two-fold) recall at 1 / 1.5 / 2 % FPR: "
          + " / ".join(f"{val.recall_at(dv, q):.4f}" for q in (0.01, 0.015, 0.02)), flush=True)
    if test is None:
        return
    w, b = fit(xv[known], yv[known])
    dv = val.docs(T.sigmoid(xv @ w + b), gate)
    thr = max(float(np.quantile(dv[val.benign_docs], 1 - T.VAL_FPR)) + 1e-6, 0.5)
    dt = test.docs(T.sigmoid(test.features(test_extra) @ w + b), gate)
    hit, inj = dt >= thr, test.label == 1
    print(f"{name}: test recall {hit[inj].mean():.4f} (direct {hit[inj & (test.kind == 'prompt')].mean():.4f}, "
          f"indirect {hit[test.kind == 'indirect'].mean():.4f}), FPR tool outputs {hit[test.benign_docs].mean():.4f}, "
          f"prompts {hit[~inj & ~test.benign_docs].mean():.4f}; recall at 1 % / 2 % test FPR "
          f"{test.recall_at(dt, 0.01):.4f} / {test.recall_at(dt, 0.02):.4f}; AUROC {T.auroc(dt[inj], dt[~inj]):.4f}", flush=True)
