#!/usr/bin/env python3
"""Checks our GGUF exports against llama.cpp and the `gguf` package, and writes the reference
data that tests/gguf_export.rs checks our engine against (tests/data/gguf-lora/).

Base: ../shared/fixtures-gguf/tiny-f32/model.gguf (written by llama.cpp's converter; see its
README). Steps:

1. `peft/`: a PEFT LoRA adapter for that base with fixed values (r 4, alpha 8, on q_proj,
   k_proj, v_proj and down_proj, so llama.cpp's q/k row order and grouped KV heads are
   exercised). Written once; kept if present, so the committed files stay what they are.
2. `adapter.gguf`: `hydralora export` of it (committed; the Rust test re-exports and compares
   bytes). The `gguf` package reads it: metadata, names, shapes, values (B of q/k permuted by
   llama.cpp's own `permute`, written out here in numpy).
3. A float64 numpy LLaMA on the base's weights (Q/K rows un-permuted), checked against the
   fixture's transformers logits, then run with W + (alpha / r) B A: `logits_reference`.
4. llama.cpp (llama-cpp-python, `logits_all=True`) on base + adapter.gguf:
   `logits_llamacpp_lora`; on our merged GGUF (`hydralora merge --format gguf`), f32 and q8_0:
   `logits_llamacpp_merged_f32`, `_q8_0`, `_q4_k` (the merged files themselves, 0.9 to 5.8 MB,
   are not committed; the test merges again). The `gguf` package reads the
   merged f32 file: metadata as the base's, tensors equal to the numpy merge.
All into `expected.safetensors`, with the measured errors in `check.json`.

Usage: python3 scripts/llamacpp_lora_check.py [--hydralora target/debug/hydralora]
Needs numpy, gguf, llama-cpp-python (a llama.cpp build of its own: LLAMA_CPP_LIB_PATH).
"""
import argparse
import json
import pathlib
import struct
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

ROOT = pathlib.Path(__file__).resolve().parent.parent
BASE = ROOT.parent / "shared/fixtures-gguf/tiny-f32"
OUT = ROOT / "tests/data/gguf-lora"
R, ALPHA = 4, 8.0
TARGETS = ["q_proj", "k_proj", "v_proj", "down_proj"]
GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
MODULE_PATH = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
               "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


# --- safetensors, by hand (numpy only) ----------------------------------------------------
DTYPES = {"F32": np.float32, "I32": np.int32, "F64": np.float64}


def read_safetensors(path):
    data = pathlib.Path(path).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + a:8 + n + b], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return out


def write_safetensors(path, tensors):
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        t = np.ascontiguousarray(tensors[name])
        dtype = {np.dtype(np.float32): "F32", np.dtype(np.int32): "I32"}[t.dtype]
        blob = t.tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    pathlib.Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


# --- the base, and llama.cpp's q/k row order ------------------------------------------------
def permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute (n_head already the KV heads for k)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def field(reader, key):
    return reader.fields[key].contents()


def read_base():
    reader = GGUFReader(BASE / "model.gguf")
    hp = {
        "layers": field(reader, "llama.block_count"),
        "heads": field(reader, "llama.attention.head_count"),
        "kv_heads": field(reader, "llama.attention.head_count_kv"),
        "eps": float(field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "theta": float(field(reader, "llama.rope.freq_base")),
        "head_dim": field(reader, "llama.attention.key_length"),
    }
    weights = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        w = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float64)
        if t.name.endswith("attn_q.weight"):
            w = unpermute(w, hp["heads"])
        elif t.name.endswith("attn_k.weight"):
            w = unpermute(w, hp["kv_heads"])
        weights[t.name] = w
    return hp, weights


def forward(hp, w, ids):
    """float64 LLaMA (transformers' math): logits [T, V] of one sequence."""
    def rms(x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + hp["eps"]) * g

    T, hd = len(ids), hp["head_dim"]
    inv = 1.0 / hp["theta"] ** (np.arange(0, hd, 2) / hd)
    ang = np.outer(np.arange(T), inv)
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):  # [heads, T, hd]
        rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
        return x * cos + rot * sin

    x = w["token_embd.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    group = hp["heads"] // hp["kv_heads"]
    for i in range(hp["layers"]):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = (h @ w[p + "attn_q.weight"].T).reshape(T, hp["heads"], hd).transpose(1, 0, 2)
        k = (h @ w[p + "attn_k.weight"].T).reshape(T, hp["kv_heads"], hd).transpose(1, 0, 2)
        v = (h @ w[p + "attn_v.weight"].T).reshape(T, hp["kv_heads"], hd).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, group, 0), np.repeat(v, group, 0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        x = x + a.transpose(1, 0, 2).reshape(T, -1) @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        g = h @ w[p + "ffn_gate.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    return rms(x, w["output_norm.weight"]) @ w["output.weight"].T


# --- the adapter ------------------------------------------------------------------------
def module_dims(module, w):
    weight = w[f"blk.0.{GGUF_NAMES[module]}.weight"]
    return weight.shape[1], weight.shape[0]  # d_in, d_out


def make_peft(hp, w, folder):
    rng = np.random.default_rng(15)
    tensors = {}
    for layer in range(hp["layers"]):
        for m in TARGETS:
            d_in, d_out = module_dims(m, w)
            key = f"base_model.model.model.layers.{layer}.{MODULE_PATH[m]}.{m}"
            tensors[key + ".lora_A.weight"] = (rng.standard_normal((R, d_in)) * 0.05).astype(np.float32)
            tensors[key + ".lora_B.weight"] = (rng.standard_normal((d_out, R)) * 0.05).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "adapter_model.safetensors", tensors)
    config = {"peft_type": "LORA", "r": R, "lora_alpha": ALPHA, "lora_dropout": 0.0,
              "target_modules": TARGETS, "task_type": "CAUSAL_LM", "bias": "none",
              "base_model_name_or_path": None}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=1))


def merged_weights(hp, w, peft):
    out = dict(w)
    for layer in range(hp["layers"]):
        for m in TARGETS:
            key = f"base_model.model.model.layers.{layer}.{MODULE_PATH[m]}.{m}"
            a = peft[key + ".lora_A.weight"].astype(np.float64)
            b = peft[key + ".lora_B.weight"].astype(np.float64)
            name = f"blk.{layer}.{GGUF_NAMES[m]}.weight"
            out[name] = w[name] + (ALPHA / R) * (b @ a)
    return out


def check_adapter_gguf(hp, path, peft):
    reader = GGUFReader(path)
    meta = {k: field(reader, k) for k in ["general.architecture", "general.type", "adapter.type"]}
    assert meta == {"general.architecture": "llama", "general.type": "adapter", "adapter.type": "lora"}, meta
    assert abs(field(reader, "adapter.lora.alpha") - ALPHA) < 1e-6
    seen = set()
    for t in reader.tensors:
        weight, part = t.name.rsplit(".", 1)
        _, layer, gguf_module, _ = weight.split(".")
        m = next(k for k, v in GGUF_NAMES.items() if v == gguf_module)
        key = f"base_model.model.model.layers.{layer}.{MODULE_PATH[m]}.{m}"
        values = dequantize(t.data, t.tensor_type).reshape(tuple(int(d) for d in reversed(t.shape)))
        if part == "lora_a":
            expected = peft[key + ".lora_A.weight"]
        else:
            expected = peft[key + ".lora_B.weight"]
            if m == "q_proj":
                expected = permute(expected, hp["heads"])
            elif m == "k_proj":
                expected = permute(expected, hp["kv_heads"])
        assert values.shape == expected.shape, (t.name, values.shape, expected.shape)
        assert np.array_equal(values, expected), t.name
        seen.add(t.name)
    assert len(seen) == 2 * hp["layers"] * len(TARGETS), sorted(seen)


def check_merged_gguf(hp, path, merged):
    ours, base = GGUFReader(path), GGUFReader(BASE / "model.gguf")
    for key, f in base.fields.items():
        if key.startswith(("llama.", "tokenizer.")):
            a, b = f.contents(), ours.fields[key].contents()
            assert a == b or (isinstance(a, float) and abs(a - b) < 1e-12), key
    for t in ours.tensors:
        values = dequantize(t.data, t.tensor_type).reshape(tuple(int(d) for d in reversed(t.shape)))
        expected = merged[t.name]
        if t.name.endswith("attn_q.weight"):
            expected = permute(expected, hp["heads"])
        elif t.name.endswith("attn_k.weight"):
            expected = permute(expected, hp["kv_heads"])
        err = np.abs(values - expected).max()
        assert err <= 1e-6, (t.name, err)


def llamacpp_logits(model, ids, lora=None):
    from llama_cpp import Llama
    kwargs = {"lora_path": str(lora)} if lora else {}
    llm = Llama(model_path=str(model), logits_all=True, n_ctx=len(ids) + 8, n_batch=len(ids) + 8,
                verbose=False, **kwargs)
    llm.eval(list(int(i) for i in ids))
    logits = np.array(llm.scores[:len(ids)], dtype=np.float32)
    del llm
    return logits


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hydralora", default=str(ROOT / "target/debug/hydralora"))
    args = ap.parse_args()

    hp, w = read_base()
    expected = read_safetensors(BASE / "expected.safetensors")
    ids = expected["input_ids"][0]
    base_logits = forward(hp, w, ids)
    base_err = rel_err(base_logits, expected["logits"][0].astype(np.float64))
    assert base_err <= 1e-4, f"the numpy LLaMA misses the fixture's logits by {base_err}"

    peft_dir = OUT / "peft"
    if not (peft_dir / "adapter_model.safetensors").is_file():
        make_peft(hp, w, peft_dir)
    peft = read_safetensors(peft_dir / "adapter_model.safetensors")

    subprocess.run([args.hydralora, "export", "--model", str(BASE / "model.gguf"), "--adapter", str(peft_dir),
                    "--out", str(OUT / "adapter.gguf")], check=True)
    (OUT / "Modelfile").unlink(missing_ok=True)  # names this machine's path
    check_adapter_gguf(hp, OUT / "adapter.gguf", peft)

    merged = merged_weights(hp, w, peft)
    reference = forward(hp, merged, ids)
    lora_effect = rel_err(reference, base_logits)
    results = {"numpy_vs_fixture_base": base_err, "adapter_effect_on_logits": lora_effect}

    # This llama.cpp computes the base as the one that made the fixture did.
    results["llamacpp_base_vs_fixture_llamacpp"] = rel_err(
        llamacpp_logits(BASE / "model.gguf", ids), expected["logits_llamacpp"][0])
    tensors = {"input_ids": expected["input_ids"].astype(np.int32),
               "logits_reference": reference[None].astype(np.float32)}
    lora_logits = llamacpp_logits(BASE / "model.gguf", ids, OUT / "adapter.gguf")
    results["llamacpp_lora_vs_reference"] = rel_err(lora_logits, reference)
    tensors["logits_llamacpp_lora"] = lora_logits[None]
    with tempfile.TemporaryDirectory() as tmp:
        for weights in ["f32", "q8_0", "q4_k"]:
            path = pathlib.Path(tmp) / f"merged-{weights}.gguf"
            subprocess.run([args.hydralora, "merge", "--model", str(BASE / "model.gguf"), "--adapter",
                            str(OUT / "adapter.gguf"), "--format", "gguf", "--weights", weights,
                            "--out", str(path)], check=True)
            if weights == "f32":
                check_merged_gguf(hp, path, merged)
                # What llama.cpp's own Q4_K_M of the same merged model costs, to judge ours by.
                import llama_cpp
                params = llama_cpp.llama_model_quantize_default_params()
                params.ftype = 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
                own = pathlib.Path(tmp) / "llamacpp-q4_k_m.gguf"
                assert llama_cpp.llama_model_quantize(str(path).encode(), str(own).encode(), params) == 0
                results["llamacpp_own_q4_k_m_vs_reference"] = rel_err(llamacpp_logits(own, ids), reference)
            logits = llamacpp_logits(path, ids)
            results[f"llamacpp_merged_{weights}_vs_reference"] = rel_err(logits, reference)
            tensors[f"logits_llamacpp_merged_{weights}"] = logits[None]
    write_safetensors(OUT / "expected.safetensors", tensors)
    (OUT / "check.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    assert results["llamacpp_base_vs_fixture_llamacpp"] <= 1e-4, results
    assert results["llamacpp_lora_vs_reference"] <= 1e-3, results
    assert results["llamacpp_merged_f32_vs_reference"] <= 1e-3, results
    assert results["llamacpp_merged_q8_0_vs_reference"] <= 4e-2, results
    # 4-bit weights of this random tiny model move its logits far; ours must cost no more
    # than llama.cpp's own Q4_K_M (its iterative scale search) of the same model, give or take.
    assert results["llamacpp_merged_q4_k_vs_reference"] <= 1.5 * results["llamacpp_own_q4_k_m_vs_reference"], results


if __name__ == "__main__":
    sys.exit(main())
