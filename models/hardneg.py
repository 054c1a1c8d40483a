#!/usr/bin/env python3
"""Hard negatives for training: data/train-hardneg.jsonl.

Most of the benign tool outputs that end up above the alert threshold are
code, READMEs and changelogs whose words look like instructions ("you
must", "system", "configuration", "the user"). One text of a file is one
sample in build_data.py; this file adds many more excerpts of the same
kinds of machine text and keeps those a word-level model finds the most
suspicious: the benign texts closest to the decision boundary.

  1. A quick pre-filter (the same hashed word n-grams and span cutting as
     train.py, 300 epochs) is fitted on the spans of data/train.jsonl.
  2. Candidates: three excerpts (80-900 characters) of each of up to 1,500
     files per family of build_data.py (man pages, READMEs, changelogs,
     copyright files, Python, C and Rust sources, Markdown, JSON, HTML,
     listings, /etc configuration), only files whose path hashes to the
     train split (build_data.split_of), and no text that is already in
     train, validation or test.
  3. The --n (10,000) candidates with the highest best-span score are written, as
     benign documents ("kind": "doc", source "<family>+hardneg").

Validation and test are not changed and not read but to keep their texts
out; seeded, so the same machine and train.jsonl give the same file.
"""

import argparse
import json
import os
import random

import numpy as np

import build_data
import train
from augment import excerpt

SEED = 20261122 + 11
FILES_PER_FAMILY = 1500
EXCERPTS_PER_FILE = 3


def span_features(tok, text):
    """Pre-filter features of every span of every window of text."""
    out = []
    for w in train.windows(tok, text):
        offs = w[5]
        for a, b in train.spans(len(w[4])):
            out.append(train.features(text[offs[a][0]:offs[b - 1][1]]))
    return out


def quick_prefilter(tok, recs):
    feats, labels = [], []
    for rec in recs:
        tspan = train.token_span(tok, rec) if rec["kind"] == "indirect" else None
        for w in train.windows(tok, rec["text"]):
            offs = w[5]
            for a, b in train.spans(len(w[4])):
                lab = train.span_label(rec, w[0] + a, w[0] + b, tspan)
                if lab is not None:
                    feats.append(train.features(rec["text"][offs[a][0]:offs[b - 1][1]]))
                    labels.append(lab)
    return train.train_prefilter(feats, np.array(labels, dtype=np.float64), epochs=300)


def candidates(rng, held):
    _, fams = build_data.machine_files(random.Random(build_data.SEED))
    out = []
    for fam, (paths, loader, _) in fams.items():
        paths = [p for p in paths if build_data.split_of(p) == "train"]
        rng.shuffle(paths)
        used = 0
        for path in paths:
            if used >= FILES_PER_FAMILY:
                break
            text = loader(path)
            if not text or "\x00" in text:
                continue
            used += 1
            for _ in range(EXCERPTS_PER_FILE):
                ex = excerpt(rng, text)
                if len(ex.split()) >= 3 and ex not in held:
                    held.add(ex)
                    out.append((fam, ex))
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(here, "data"))
    ap.add_argument("--n", type=int, default=10000, help="hard negatives to keep")
    args = ap.parse_args()
    rng = random.Random(SEED)
    recs = {}
    for split in ("train", "val", "test"):
        with open(os.path.join(args.data, f"{split}.jsonl")) as f:
            recs[split] = [json.loads(line) for line in f]
    held = {r["text"] for split in recs.values() for r in split}
    tok = train.make_tokenizer()
    w, b = quick_prefilter(tok, recs["train"])
    cands = candidates(rng, held)
    scores = []
    for _, ex in cands:
        best = max(w[f].sum() / np.sqrt(max(len(f), 1)) for f in span_features(tok, ex))
        scores.append(train.sigmoid(best + b))
    keep = sorted(np.argsort(-np.array(scores), kind="stable")[: args.n])
    with open(os.path.join(args.data, "train-hardneg.jsonl"), "w") as f:
        for i in keep:
            fam, ex = cands[i]
            rec = {"text": ex, "label": 0, "kind": "doc", "source": f"{fam}+hardneg", "span": None}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"train-hardneg {len(keep)} of {len(cands)} candidates (best-span pre-filter score >= {min(scores[i] for i in keep):.3f})")


if __name__ == "__main__":
    main()
