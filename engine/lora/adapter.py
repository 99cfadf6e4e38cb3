"""Reads and validates a PEFT LoRA folder against the loaded base; every problem is reported at once."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from engine.errors import PICKLE_SUFFIXES, AdapterError
from engine.model_config import LlamaArgs

log = logging.getLogger(__name__)

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.\w+)?\.weight$"
)


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: str
    ranks: dict[str, int]  # module -> rank (the largest over layers)
    alpha: float
    target_modules: tuple[str, ...]
    size_bytes: int
    sha256: str
    state: str  # "cpu" | "gpu"
    base_model: str | None
    use_rslora: bool = False
    warnings: tuple[str, ...] = ()

    @property
    def rank(self) -> int:
        return max(self.ranks.values(), default=0)


@dataclass
class AdapterWeights:
    """fp16 CPU copies: (layer, module) -> (A [r, in], B [out, r], scale)."""

    info: AdapterInfo
    modules: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)


def module_shapes(args: LlamaArgs) -> dict[str, tuple[int, int]]:
    """module -> (in_features, out_features) of the base."""
    h, i = args.hidden_size, args.intermediate_size
    return {
        "q_proj": (h, args.q_size),
        "k_proj": (h, args.kv_size),
        "v_proj": (h, args.kv_size),
        "o_proj": (args.q_size, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }


def pattern_value(patterns: dict[str, Any], module_path: str, default: Any) -> Any:
    """PEFT's rank_pattern/alpha_pattern rule: the first key that matches a suffix of the module path."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module_path):
            return value
    return default


def _read_config(folder: Path, problems: list[str]) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        problems.append(f"{CONFIG_FILE} is missing")
        return {}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(f"{CONFIG_FILE} is not valid JSON ({e})")
        return {}
    if not isinstance(cfg, dict):
        problems.append(f"{CONFIG_FILE} must hold a JSON object")
        return {}
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        problems.append(f"peft_type is '{cfg.get('peft_type')}', only LORA adapters are supported")
    if cfg.get("modules_to_save"):
        problems.append(
            f"modules_to_save {cfg['modules_to_save']} is not supported (it replaces whole base modules such as "
            "embeddings or lm_head, which the shared base cannot do per request)"
        )
    if cfg.get("use_dora"):
        problems.append("DoRA (use_dora: true) is not supported")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias '{cfg.get('bias')}' is not supported (only 'none')")
    for key in ("r", "lora_alpha"):
        if key in cfg and not isinstance(cfg[key], (int, float)):
            problems.append(f"{key} must be a number, got {cfg[key]!r}")
    targets = cfg.get("target_modules")
    if isinstance(targets, list):
        unknown = [t for t in targets if t.split(".")[-1] not in TARGETS]
        if unknown:
            problems.append(f"unknown target module(s) {unknown}; supported: {', '.join(TARGETS)}")
    elif targets is not None and not isinstance(targets, str):
        problems.append(f"target_modules must be a list or a regex string, got {targets!r}")
    return cfg


def _read_tensors(folder: Path, problems: list[str]) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        pickles = [p.name for p in folder.glob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickles:
            problems.append(
                f"weights are in pickle format ({', '.join(pickles)}); Storyloom loads {WEIGHTS_FILE} only, "
                "because pickle files can run arbitrary code"
            )
        else:
            problems.append(f"{WEIGHTS_FILE} is missing")
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        problems.append(f"{WEIGHTS_FILE} is corrupt or truncated ({e})")
        return {}


def read_adapter(name: str, folder: str | Path, args: LlamaArgs, max_rank: int) -> AdapterWeights:
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(name, [f"{folder} is not a folder"])
    problems: list[str] = []
    cfg = _read_config(folder, problems)
    tensors = _read_tensors(folder, problems)
    shapes = module_shapes(args)
    layers = cfg.get("layers_to_transform")
    layers = {layers} if isinstance(layers, int) else set(layers) if layers else None
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = KEY.match(key)
        if not m:
            problems.append(f"tensor '{key}' does not belong to a supported projection ({', '.join(TARGETS)})")
            continue
        layer, module, ab = int(m[1]), m[2], m[3]
        if module not in TARGETS:
            problems.append(f"tensor '{key}': unknown target module '{module}'")
        elif layer >= args.num_layers:
            problems.append(f"tensor '{key}': layer {layer} does not exist (the base has {args.num_layers})")
        elif layers is None or layer in layers:
            pairs.setdefault((layer, module), {})[ab] = t
    modules: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, float]] = {}
    ranks: dict[str, int] = {}
    alpha_default = float(cfg.get("lora_alpha", cfg.get("r", 8)))
    for (layer, module), ab in sorted(pairs.items()):
        where = f"layer {layer} {module}"
        if set(ab) != {"A", "B"}:
            problems.append(f"{where}: lora_{'B' if 'A' in ab else 'A'} is missing")
            continue
        a, b = ab["A"], ab["B"]
        fan_in, fan_out = shapes[module]
        r = a.shape[0]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != fan_in or b.shape != (fan_out, r):
            problems.append(
                f"{where}: shapes A {tuple(a.shape)} / B {tuple(b.shape)} do not fit the base (expected "
                f"A [r, {fan_in}], B [{fan_out}, r]) — is this adapter for another model size?"
            )
            continue
        if r > max_rank:
            problems.append(f"{where}: rank {r} is above the configured maximum of {max_rank}")
            continue
        path = (
            f"model.layers.{layer}.{'mlp' if module in ('gate_proj', 'up_proj', 'down_proj') else 'self_attn'}.{module}"
        )
        expected_r = pattern_value(cfg.get("rank_pattern") or {}, path, cfg.get("r", r))
        if expected_r != r:
            problems.append(f"{where}: tensor rank {r} differs from the configured rank {expected_r}")
            continue
        alpha = float(pattern_value(cfg.get("alpha_pattern") or {}, path, alpha_default))
        scale = alpha / (r**0.5) if cfg.get("use_rslora") else alpha / r
        modules[(layer, module)] = (a.to(torch.float16), b.to(torch.float16), scale)
        ranks[module] = max(ranks.get(module, 0), r)
    if tensors and not modules and not problems:
        problems.append("the weights file holds no LoRA tensors")
    if problems:
        raise AdapterError(name, problems)
    warnings = family_warnings(cfg.get("base_model_name_or_path"))
    weights_path = folder / WEIGHTS_FILE
    info = AdapterInfo(
        name=name,
        path=str(folder),
        ranks=ranks,
        alpha=alpha_default,
        target_modules=tuple(m for m in TARGETS if m in ranks),
        size_bytes=weights_path.stat().st_size,
        sha256=_sha256(weights_path),
        state="cpu",
        base_model=cfg.get("base_model_name_or_path"),
        use_rslora=bool(cfg.get("use_rslora")),
        warnings=tuple(warnings),
    )
    for w in warnings:
        log.warning("adapter '%s': %s", name, w)
    return AdapterWeights(info, modules)


OTHER_FAMILIES = ("mistral", "mixtral", "qwen", "gemma", "phi", "falcon", "gpt", "opt", "bloom", "olmo", "deepseek")


def family_warnings(base: Any) -> list[str]:
    """A warning when the adapter's base model name (its last path part, e.g. "Mistral-7B-v0.1") is another family."""
    if not isinstance(base, str) or not base.strip():
        return []
    words = re.split(r"[^a-z0-9]+", base.strip().replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].lower())
    if any(w.startswith("llama") for w in words):
        return []
    if any(w.startswith(family) for w in words for family in OTHER_FAMILIES):
        return [f"it was trained for '{base}', a different model family than the loaded Llama base; output may be poor"]
    return []


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
