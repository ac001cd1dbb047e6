#!/usr/bin/env python3
"""Make (and check) parity fixtures with Hugging Face `transformers` + `peft`.

The layout is the one described in `../shared/fixtures/README.md`; one case folder holds

    config.json, generation_config.json      a LlamaForCausalLM config (transformers' save_pretrained)
    model.safetensors                        random weights, HF names, stored in f32, f16 or bf16
      or model.gguf                          a quantized file from ../shared/fixtures-gguf, as llama.cpp wrote it
    expected.safetensors                     input_ids, labels [B,T] i32; logits [B,T,V], loss [1] f32
    fixture.json                             the case's settings
    lora*/                                   a PEFT LoRA adapter (peft's save_pretrained) + expected.safetensors
    hydra-N/                                 a HydraLoRA adapter (official repository key names) + expected

Every reference value is computed in float64 from exactly the stored values: the model is loaded
with `from_pretrained(dtype=torch.float64)`, PEFT adapters with `PeftModel.from_pretrained`, HydraLoRA
adapters into the float64 HydraLoRA layers below. Only RoPE's cos/sin are float32, as
`transformers` computes them (it does so whatever the model's dtype). Results are saved as float32.

Usage (needs torch, transformers, peft, safetensors; CPU is enough; keep the venv out of the repo):

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch transformers peft safetensors
    /tmp/venv/bin/python scripts/make_fixtures.py generate --out tests/fixtures-extra
    /tmp/venv/bin/python scripts/make_fixtures.py generate --out /tmp/fx --case mha-tied-bf16
    /tmp/venv/bin/python scripts/make_fixtures.py check ../shared/fixtures/tiny-llama

`check` recomputes every expected tensor of an existing case from its stored weights, inputs and
adapters and prints the largest differences from the stored ones: it validates this script
against fixtures made elsewhere (and any case against this script).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import peft
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

IGNORE = -100
ADAMW = {"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "steps": 10}
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
ALL_TARGETS = ATTN + MLP
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# ---------------------------------------------------------------------------------------------
# The cases `generate` makes. `config` goes to transformers' LlamaConfig as is.
# ---------------------------------------------------------------------------------------------
CASES = {
    # Multi-head attention (as many kv heads as q heads), tied embeddings (no lm_head.weight in
    # the file), rope_theta 5e5, three layers, bf16 weights.
    "mha-tied-bf16": {
        "config": {
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_hidden_layers": 3,
            "num_attention_heads": 3,
            "num_key_value_heads": 3,
            "head_dim": 16,
            "vocab_size": 80,
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
            "tie_word_embeddings": True,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        "dtype": "bfloat16",
        "batch": 2,
        "seq": 13,
        "seed": 1,
        "adapters": [
            {"dir": "lora", "kind": "lora", "targets": ["q_proj", "o_proj", "up_proj", "down_proj"],
             "r": 8, "alpha": 16},
            {"dir": "hydra-4", "kind": "hydra", "targets": ["k_proj", "v_proj", "gate_proj"],
             "r": 2, "alpha": 4, "experts": 4},
        ],
    },
    # Grouped-query attention with one kv head, head_dim 16 while hidden_size / heads = 12,
    # llama3 rope scaling whose bands all occur (head_dim 16, theta 1e4: wavelengths 6.3 (kept),
    # 19.9 (interpolated), 62.8 and longer (divided by the factor)), untied, f16 weights.
    "gqa-llama3-rope": {
        "config": {
            "hidden_size": 48,
            "intermediate_size": 80,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "vocab_size": 72,
            "max_position_embeddings": 128,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        "dtype": "float16",
        "batch": 2,
        "seq": 24,
        "seed": 2,
        "adapters": [
            # All seven targets at r 2 make the random adapter large next to the base weights; with
            # most PEFT init seeds float32 then uses up to half a tolerance (gradients or the AdamW
            # curve), which `conditioning` rejects. Seed 0 keeps it under 4%.
            {"dir": "lora", "kind": "lora", "targets": ALL_TARGETS, "r": 2, "alpha": 3,
             "use_rslora": True, "seed": 0},
            {"dir": "hydra-2", "kind": "hydra", "targets": ["q_proj", "o_proj", "down_proj"],
             "r": 4, "alpha": 6, "experts": 2},
        ],
    },
    # A quantized base as llama.cpp writes it: ../shared/fixtures-gguf/tiny-q4-k-m (Q4_K layers,
    # Q6_K output; hidden 256, untied, vocab 512), copied as the case's model.gguf. The float64
    # reference runs on the file's dequantized weights (transformers' GGUF loader dequantizes with
    # the `gguf` package and undoes llama.cpp's Q/K row permutation): the math of an engine that
    # dequantizes frozen weights inside its kernels. Adapters and optimizer are f32 as usual.
    "gguf-q4-k-m": {
        "gguf": "tiny-q4-k-m",
        "batch": 2,
        "seq": 16,
        "seed": 4,
        "adapters": [
            # All seven targets with random A and B: at lr 1e-2 the float32 AdamW curve drifts
            # from float64 by more than the tolerance (chaotic); at 1e-3 it stays well inside.
            {"dir": "lora", "kind": "lora", "targets": ALL_TARGETS, "r": 4, "alpha": 8, "seed": 0,
             "adamw": {**ADAMW, "lr": 1e-3}},
            {"dir": "hydra-2", "kind": "hydra", "targets": MLP, "r": 4, "alpha": 8, "experts": 2},
        ],
    },
    # The layout of ../shared/fixtures/tiny-llama (new random values).
    "tiny-llama": {
        "config": {
            "hidden_size": 64,
            "intermediate_size": 160,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "vocab_size": 96,
            "max_position_embeddings": 128,
            "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        "dtype": "float32",
        "batch": 2,
        "seq": 11,
        "seed": 0,
        "adapters": [
            {"dir": "lora", "kind": "lora", "targets": ["q_proj", "v_proj"], "r": 4, "alpha": 8},
            {"dir": "hydra-3", "kind": "hydra", "targets": MLP, "r": 4, "alpha": 8, "experts": 3},
        ],
    },
}


# ---------------------------------------------------------------------------------------------
# HydraLoRA (PEFT has none): the official repository's layer, dense softmax routing.
# ---------------------------------------------------------------------------------------------
class HydraLinear(nn.Module):
    """`y = W0 x + (alpha / r) * sum_i softmax(W_route x)_i * B_i (A x)`, one router per module.

    Submodules are named as in the official repository, so the state-dict keys are
    `...{module}.lora_A.weight`, `...lora_B{i}.weight`, `...lora_route.weight`.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, experts: int):
        super().__init__()
        self.base_layer = base
        self.experts = experts
        self.scaling = alpha / r
        dtype = base.weight.dtype
        self.lora_A = nn.Linear(base.in_features, r, bias=False, dtype=dtype)
        for i in range(experts):
            setattr(self, f"lora_B{i}", nn.Linear(r, base.out_features, bias=False, dtype=dtype))
        self.lora_route = nn.Linear(base.in_features, experts, bias=False, dtype=dtype)

    def forward(self, x):
        result = self.base_layer(x)
        route = torch.softmax(self.lora_route(x), dim=-1)
        ax = self.lora_A(x)
        for i in range(self.experts):
            result = result + route[..., i : i + 1] * getattr(self, f"lora_B{i}")(ax) * self.scaling
        return result


def hydra_keys(module_path: str, experts: int) -> list[str]:
    names = ["lora_A"] + [f"lora_B{i}" for i in range(experts)] + ["lora_route"]
    return [f"base_model.model.{module_path}.{n}.weight" for n in names]


def target_paths(model: LlamaForCausalLM, targets: list[str]) -> list[str]:
    """`model.layers.{L}.{self_attn|mlp}.{module}` for every targeted linear, in model order."""
    paths = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.split(".")[-1] in targets and ".layers." in f".{name}":
            paths.append(name)
    return paths


def attach_hydra(model: LlamaForCausalLM, r: int, alpha: float, experts: int, targets: list[str]):
    """Wraps the targeted linears of `model` in place; returns {file key: parameter}. Only the
    adapter trains (the base weights are frozen)."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = {}
    for path in target_paths(model, targets):
        parent_path, leaf = path.rsplit(".", 1)
        parent = model.get_submodule(parent_path)
        layer = HydraLinear(getattr(parent, leaf), r, alpha, experts)
        setattr(parent, leaf, layer)
        names = ["lora_A"] + [f"lora_B{i}" for i in range(experts)] + ["lora_route"]
        for n, key in zip(names, hydra_keys(path, experts)):
            w = getattr(layer, n).weight
            w.requires_grad_(True)
            params[key] = w
    return params


# ---------------------------------------------------------------------------------------------
# The reference computation, shared by `generate` and `check`.
# ---------------------------------------------------------------------------------------------
GGUF_FILE = "model.gguf"
GGUF_FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures-gguf"


def load_base(case: Path, dtype=torch.float64) -> LlamaForCausalLM:
    gguf = {"gguf_file": GGUF_FILE} if (case / GGUF_FILE).is_file() else {}
    model = LlamaForCausalLM.from_pretrained(case, dtype=dtype, attn_implementation="eager", **gguf)
    model.eval()  # no dropout anywhere (the configs have none either)
    return model


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits[:, t] against labels[:, t+1] over labels != -100, in f64.

    (transformers' own loss casts the logits to float32 first; this is the same in float64.)
    """
    v = logits.shape[-1]
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, v), labels[:, 1:].reshape(-1).long(), ignore_index=IGNORE
    ).reshape(1)


def forward(model, ids, labels):
    out = model(input_ids=ids.long(), labels=labels.long())
    logits = out.logits
    loss = causal_lm_loss(logits, labels)
    # transformers' loss (through float32 logits) must agree with ours to f32 accuracy.
    assert abs(out.loss.item() - loss.item()) < 1e-5 * max(1.0, abs(loss.item())), (out.loss, loss)
    return logits, loss


def adapter_model(case: Path, adapter_dir: Path, dtype=torch.float64):
    """The float64 model with the adapter loaded; returns (model, {grad key suffix: parameter})."""
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = load_base(case, dtype)
    if "lora_nums" in cfg:  # HydraLoRA
        experts = int(cfg["lora_nums"])
        params = attach_hydra(base, int(cfg["r"]), float(cfg["lora_alpha"]), experts, cfg["target_modules"])
        stored = load_file(adapter_dir / "adapter_model.safetensors")
        if set(stored) != set(params):
            raise SystemExit(f"{adapter_dir}: keys differ: {sorted(set(stored) ^ set(params))[:6]}")
        with torch.no_grad():
            for key, p in params.items():
                if tuple(stored[key].shape) != tuple(p.shape):
                    raise SystemExit(f"{adapter_dir}: {key} is {tuple(stored[key].shape)}, want {tuple(p.shape)}")
                p.copy_(stored[key].to(dtype))
        return base, params
    model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    stored = load_file(adapter_dir / "adapter_model.safetensors")
    # Every stored tensor is live, in float64, with exactly the stored values.
    assert len(params) == len(stored), (len(params), len(stored))
    for name, p in params.items():
        assert p.dtype == dtype, (name, p.dtype)
        file_key = name.replace(".default.weight", ".weight")
        assert torch.equal(p.detach(), stored[file_key].to(dtype)), name
    return model, params


def adamw_curve(case: Path, adapter_dir: Path, ids, labels, adamw=ADAMW, dtype=torch.float64) -> list[float]:
    model, params = adapter_model(case, adapter_dir, dtype)
    opt = torch.optim.AdamW(
        list(params.values()),
        lr=adamw["lr"],
        betas=tuple(adamw["betas"]),
        eps=adamw["eps"],
        weight_decay=adamw["weight_decay"],
    )
    losses = []
    for _ in range(adamw["steps"]):
        opt.zero_grad()
        _, loss = forward(model, ids, labels)
        losses.append(loss.item())
        loss.sum().backward()
        opt.step()
    return losses


def reference(case: Path, ids: torch.Tensor, labels: torch.Tensor, dtype=torch.float64):
    """{"": base expected tensors, adapter folder name: its expected tensors}.

    In float64 this is the reference; in float32 it measures how well-conditioned a case is.
    """
    out = {}
    with torch.no_grad():
        logits, loss = forward(load_base(case, dtype), ids, labels)
    out[""] = {"input_ids": ids, "labels": labels, "logits": logits.float(), "loss": loss.float()}
    for adapter_dir in sorted(p for p in case.iterdir() if (p / "adapter_config.json").is_file()):
        adamw = ADAMW
        if (adapter_dir / "fixture.json").is_file():
            adamw = json.loads((adapter_dir / "fixture.json").read_text()).get("adamw", ADAMW)
        model, params = adapter_model(case, adapter_dir, dtype)
        logits, loss = forward(model, ids, labels)
        loss.sum().backward()
        tensors = {"logits": logits.detach().float(), "loss": loss.detach().float()}
        for name, p in params.items():
            tensors[f"grad.{name}"] = p.grad.float()
        tensors["adamw_losses"] = torch.tensor(adamw_curve(case, adapter_dir, ids, labels, adamw, dtype), dtype=torch.float32)
        tensors["input_ids"] = ids
        tensors["labels"] = labels
        out[adapter_dir.name] = tensors
    return out


# ---------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------
def random_weights(model: LlamaForCausalLM, gen: torch.Generator):
    """Weights ~ N(0, 0.02^2) as transformers' init, norms ~ 1 + 0.2 N(0, 1), and q_proj, k_proj
    ~ N(0, 0.12^2) so that attention is far from uniform and RoPE moves the logits well past the
    tolerance (with 0.02, doubling rope_theta changed them by only about twice the tolerance)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                p.copy_(0.12 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))


def make_inputs(batch: int, seq: int, vocab: int, gen: torch.Generator):
    ids = torch.randint(0, vocab, (batch, seq), generator=gen, dtype=torch.int32)
    labels = ids.clone()
    labels[:, :3] = IGNORE  # a "prompt" with no loss
    labels[-1, seq // 2] = IGNORE  # and one hole in the middle
    return ids, labels


def save_lora(case: Path, spec: dict, gen_seed: int):
    """A PEFT adapter with random nonzero A and B, saved by peft's save_pretrained."""
    base = load_base(case, torch.float32)
    base.name_or_path = None  # adapter_config.json's base_model_name_or_path: null, as the originals
    cfg = LoraConfig(
        r=spec["r"],
        lora_alpha=spec["alpha"],
        target_modules=spec["targets"],
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=False,  # A and B both random (nn.Linear's kaiming-uniform init)
        use_rslora=spec.get("use_rslora", False),
    )
    torch.manual_seed(gen_seed)
    model = get_peft_model(base, cfg)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.dtype == torch.float32 and p.abs().max() > 0, n
    model.save_pretrained(case / spec["dir"])
    (case / spec["dir"] / "README.md").unlink(missing_ok=True)  # peft's model card: not part of the layout


def save_hydra(case: Path, spec: dict, gen: torch.Generator, cfg: dict):
    """A HydraLoRA adapter with random nonzero A, B_i and router, in the official key names."""
    config = cfg if isinstance(cfg, LlamaConfig) else LlamaConfig(**cfg)
    base = LlamaForCausalLM(config)
    params = attach_hydra(base, spec["r"], spec["alpha"], spec["experts"], spec["targets"])
    tensors = {}
    for key, p in params.items():
        rows, cols = p.shape
        if ".lora_A." in key:
            std = 1.0 / math.sqrt(cols)  # keeps A x of order |x|
        elif ".lora_route." in key:
            std = 2.0 / math.sqrt(cols)  # routing weights far from uniform
        else:
            std = 0.2
        tensors[key] = (std * torch.randn(rows, cols, generator=gen)).contiguous()
    out = case / spec["dir"]
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    adapter_config = {
        "peft_type": "LORA",
        "r": spec["r"],
        "lora_alpha": spec["alpha"],
        "lora_nums": spec["experts"],
        "lora_dropout": 0.0,
        "target_modules": spec["targets"],
        "task_type": "CAUSAL_LM",
    }
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=1) + "\n")


def generate(name: str, root: Path):
    spec = CASES[name]
    case = root / name
    if case.exists():
        shutil.rmtree(case)
    case.mkdir(parents=True)
    gen = torch.Generator().manual_seed(spec["seed"])

    if "gguf" in spec:
        # The model: llama.cpp's file as it is.
        source = GGUF_FIXTURES / spec["gguf"]
        shutil.copyfile(source / GGUF_FILE, case / GGUF_FILE)
        config = load_base(case).config
        spec = {**spec, "config": config.to_dict(), "dtype": "gguf " + spec["gguf"]}
    else:
        # The model: random f32 values rounded to the case's dtype and saved by save_pretrained
        # (which writes config.json and generation_config.json, and leaves out a tied lm_head).
        config = LlamaConfig(**spec["config"])
        model = LlamaForCausalLM(config)
        random_weights(model, gen)
        if config.tie_word_embeddings:
            assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        model = model.to(DTYPES[spec["dtype"]])
        model.save_pretrained(case)
        stored = load_file(case / "model.safetensors")
        assert all(t.dtype == DTYPES[spec["dtype"]] for t in stored.values())
        assert ("lm_head.weight" in stored) != config.tie_word_embeddings

    ids, labels = make_inputs(spec["batch"], spec["seq"], config.vocab_size, gen)
    for i, a in enumerate(spec["adapters"]):
        if a["kind"] == "lora":
            save_lora(case, a, a.get("seed", spec["seed"] * 1000 + i))
        else:
            save_hydra(case, a, gen, spec["config"])
        (case / a["dir"]).mkdir(exist_ok=True)
        if "adamw" in a:  # read by `reference` (and by the engine's checks) from fixture.json
            (case / a["dir"] / "fixture.json").write_text(json.dumps({"adamw": a["adamw"]}) + "\n")

    ref = reference(case, ids, labels)
    if "gguf" in spec:
        # The same file's float64 logits from the fixtures (made without transformers' GGUF
        # loader: un-permuted and dequantized by hand) on their own ids: the loader must agree.
        theirs = load_file(source / "expected.safetensors")
        with torch.no_grad():
            ours, _ = forward(load_base(case), theirs["input_ids"], theirs["labels"])
        diff = (ours.float() - theirs["logits"]).abs().max().item()
        print(f"{case}: transformers' GGUF loader vs {source.name}'s logits: max |a-b| {diff:.2e}")
        assert diff <= 1e-5 * max(1.0, theirs["logits"].abs().max().item()), diff
    save_file({k: v.contiguous() for k, v in ref[""].items()}, case / "expected.safetensors")
    fixture = {
        "case": name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "dtype": spec["dtype"],
        "batch": spec["batch"],
        "seq": spec["seq"],
        "loss": ref[""]["loss"].item(),
    }
    (case / "fixture.json").write_text(json.dumps(fixture, indent=1) + "\n")
    for a in spec["adapters"]:
        tensors = ref[a["dir"]]
        tensors = {k: v for k, v in tensors.items() if k not in ("input_ids", "labels")}
        tensors["input_ids"], tensors["labels"] = ids, labels
        save_file({k: v.contiguous() for k, v in tensors.items()}, case / a["dir"] / "expected.safetensors")
        info = {"case": name, "method": a["kind"], "r": a["r"], "alpha": a["alpha"]}
        if a["kind"] == "hydra":
            info["experts"] = a["experts"]
        else:
            info["use_rslora"] = a.get("use_rslora", False)
        info.update({"targets": a["targets"], "adamw": a.get("adamw", ADAMW), "losses": tensors["adamw_losses"].tolist()})
        (case / a["dir"] / "fixture.json").write_text(json.dumps(info, indent=1) + "\n")
    size = sum(f.stat().st_size for f in case.rglob("*") if f.is_file())
    print(f"{case}: {size} bytes; base loss {ref['']['loss'].item():.6f}; "
          + ", ".join(f"{a['dir']} loss {ref[a['dir']]['loss'].item():.6f}" for a in spec["adapters"]))
    # The files just written must reproduce themselves, and float32 must sit well inside the tolerances.
    assert check(case) < 1e-6
    assert conditioning(case, ids, labels, ref, limit=0.05) <= 0.05, f"{case}: ill-conditioned, change the spec"


# ---------------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------------
def readme_errors(got: dict, want: dict) -> dict:
    """The README's measures, each divided by its tolerance: logits and loss max|a-b| over
    1e-4 max(1, max|b|); gradients relative L2 over 1e-4; AdamW losses max relative over 5e-4."""
    worst = {}
    for k, b in want.items():
        if k in ("input_ids", "labels"):
            continue
        a, b = got[k].double(), b.double()
        if k.startswith("grad."):
            kind, e = "grads", ((a - b).norm() / b.norm().clamp_min(1e-300)).item() / 1e-4
        elif k == "adamw_losses":
            kind, e = k, ((a - b).abs() / b.abs()).max().item() / 5e-4
        else:
            kind, e = k, (a - b).abs().max().item() / (1e-4 * max(1.0, b.abs().max().item()))
        worst[kind] = max(worst.get(kind, 0.0), e)
    return worst


def conditioning(case: Path, ids, labels, ref: dict, limit: float) -> float:
    """Recomputes the case in float32 (PyTorch, CPU) and prints each error as a fraction of the
    README's tolerance: a case whose float32 result uses much of it (an AdamW curve that sits
    on a knife edge, say) cannot tell a correct float32 implementation from a wrong one."""
    f32 = reference(case, ids, labels, torch.float32)
    worst = 0.0
    for name, tensors in ref.items():
        fractions = readme_errors(f32[name], tensors)
        worst = max(worst, *fractions.values())
        print(f"  float32 torch vs float64, {name or 'base':<8}: "
              + ", ".join(f"{k} {v:.1e}" for k, v in fractions.items()) + " of tolerance")
    if worst > limit:
        print(f"{case}: float32 uses {worst:.2f} of a tolerance (limit {limit}): ill-conditioned")
    return worst

def compare(label: str, got: dict, want: dict) -> float:
    """Prints, per tensor kind, max |a-b| / max(1, max|b|) and relative L2; returns the worst."""
    worst = 0.0
    if set(got) != set(want):
        print(f"  {label}: keys differ: {sorted(set(got) ^ set(want))}")
        return math.inf
    rows = {}
    for k in sorted(want):
        a, b = got[k].double(), want[k].double()
        if a.shape != b.shape:
            print(f"  {label}: {k}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
            return math.inf
        if k in ("input_ids", "labels"):
            assert torch.equal(a, b)
            continue
        abs_err = (a - b).abs().max().item() / max(1.0, b.abs().max().item())
        rel_l2 = ((a - b).norm() / b.norm().clamp_min(1e-300)).item()
        kind = "grad" if k.startswith("grad.") else k
        e = rows.setdefault(kind, [0.0, 0.0, 0])
        e[0], e[1], e[2] = max(e[0], abs_err), max(e[1], rel_l2), e[2] + 1
        worst = max(worst, abs_err if kind != "grad" else rel_l2)
    for kind, (abs_err, rel_l2, n) in rows.items():
        print(f"  {label:<10} {kind:<14} x{n:<3} max|a-b|/max(1,|b|) {abs_err:.2e}   rel-L2 {rel_l2:.2e}")
    return worst


def check(case: Path) -> float:
    stored = load_file(case / "expected.safetensors")
    ref = reference(case, stored["input_ids"], stored["labels"])
    worst = compare("base", ref[""], stored)
    for name, tensors in ref.items():
        if name:
            want = load_file(case / name / "expected.safetensors")
            if "input_ids" not in want:
                tensors = {k: v for k, v in tensors.items() if k not in ("input_ids", "labels")}
            worst = max(worst, compare(name, tensors, want))
    print(f"{case}: worst difference {worst:.2e}")
    return worst


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="make cases from the built-in specs")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--case", action="append", choices=sorted(CASES),
                   help="one case (repeatable); default: all but tiny-llama")
    c = sub.add_parser("check", help="recompute existing cases and compare")
    c.add_argument("cases", type=Path, nargs="+")
    c.add_argument("--tolerance", type=float, default=1e-5)
    args = p.parse_args()
    if args.cmd == "generate":
        for name in args.case or [n for n in CASES if n != "tiny-llama"]:
            generate(name, args.out)
    else:
        worst = max(check(case) for case in args.cases)
        sys.exit(0 if worst <= args.tolerance else 1)


if __name__ == "__main__":
    main()
