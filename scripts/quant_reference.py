#!/usr/bin/env python3
"""Writes engine/tests/data/quant/: the reference bytes that engine/tests/quant.rs checks
our GGUF block formats against.

From ../shared/fixtures-gguf (a tiny LLaMA that llama.cpp itself quantized, see its README):
the first ROWS rows of `blk.0.ffn_gate.weight`
- `input.f32`: the f32 weights (tiny-f32/model.gguf);
- `<type>.llamacpp.bin`: llama.cpp's blocks of the same rows (tiny-q8-0, tiny-q4-0,
  tiny-q4-k-m, tiny-q6-k);
- `<type>.llamacpp.f32`: those blocks dequantized by the `gguf` package (gguf.quants);
- `<type>.gguf-py.bin`: the `gguf` package's own quantization of the f32 rows, for the
  types it quantizes (q8_0, q4_0: bit-exact ports of llama.cpp's reference quantizer).
All little-endian, row-major. Needs `pip install gguf numpy`.
"""
import pathlib
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType as T
from gguf import quants

ROWS = 16
TENSOR = "blk.0.ffn_gate.weight"
FILES = {T.Q8_0: "tiny-q8-0", T.Q4_0: "tiny-q4-0", T.Q4_K: "tiny-q4-k-m", T.Q6_K: "tiny-q6-k"}


def tensor(folder: pathlib.Path, name: str):
    for t in GGUFReader(folder / "model.gguf").tensors:
        if t.name == name:
            return t
    sys.exit(f"{folder}: no tensor {name}")


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/fixtures-gguf")
    out = pathlib.Path(__file__).resolve().parent.parent / "engine/tests/data/quant"
    out.mkdir(parents=True, exist_ok=True)
    f32 = tensor(root / "tiny-f32", TENSOR)
    cols = int(f32.shape[0])
    rows = np.array(f32.data, dtype=np.float32).reshape(-1, cols)[:ROWS]
    rows.tofile(out / "input.f32")
    for qtype, folder in FILES.items():
        t = tensor(root / folder, TENSOR)
        assert t.tensor_type == qtype, (folder, t.tensor_type)
        name = qtype.name.lower()
        blocks = np.array(t.data, dtype=np.uint8).reshape(int(t.shape[1]), -1)[:ROWS]
        blocks.tofile(out / f"{name}.llamacpp.bin")
        quants.dequantize(blocks, qtype).astype(np.float32).tofile(out / f"{name}.llamacpp.f32")
        if qtype in (T.Q8_0, T.Q4_0):
            quants.quantize(rows, qtype).tofile(out / f"{name}.gguf-py.bin")
    print(f"wrote {out} ({ROWS} x {cols} values)")


if __name__ == "__main__":
    main()
