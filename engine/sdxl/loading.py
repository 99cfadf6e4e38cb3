"""Find and load SDXL weights: a diffusers folder or one `.safetensors` checkpoint, offline, safetensors only."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline
from safetensors import safe_open

from assets import ASSETS_DIR
from engine.errors import PICKLE_SUFFIXES, CheckpointError, UnsafeCheckpointError

logger = logging.getLogger(__name__)

SDXL_CONFIG_DIR = ASSETS_DIR / "sdxl"
MODEL_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
BPE_FILES = ("vocab.json", "merges.txt")
# Tensors a single-file SDXL checkpoint must hold, by component (original / LDM key layout).
SINGLE_FILE_MARKERS = {
    "UNet": "model.diffusion_model.",
    "CLIP-L text encoder": "conditioner.embedders.0.transformer.",
    "OpenCLIP-bigG text encoder": "conditioner.embedders.1.model.",
    "VAE": "first_stage_model.",
}


def _refuse_pickle(path: Path, what: str) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeCheckpointError(
            f"{what} '{path}' is a pickle file ({path.suffix}); Storyloom loads .safetensors only "
            "(pickle files can run code when opened). Use the .safetensors release of this model."
        )


def _weight_problems(folder: Path, name: str) -> tuple[list[str], list[str]]:
    """(missing, pickle-only) problems of one model component folder."""
    sub = folder / name
    if not sub.is_dir():
        return [f"missing folder '{name}/'"], []
    missing = [] if (sub / "config.json").is_file() else [f"missing '{name}/config.json'"]
    if any(sub.glob("*.safetensors")):
        return missing, []
    pickles = sorted(p.name for p in sub.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        return missing, [f"'{name}/' has only pickle weights ({', '.join(pickles)}); .safetensors needed"]
    return [*missing, f"missing weights '{name}/*.safetensors'"], []


def check_folder(folder: Path) -> dict:
    """Raise one CheckpointError (UnsafeCheckpointError for pickle-only weights) naming every missing file."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise CheckpointError(f"SDXL model folder '{folder}': missing model_index.json")
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"SDXL model folder '{folder}': unreadable model_index.json ({exc})") from exc
    if "StableDiffusionXL" not in str(index.get("_class_name", "")):
        raise CheckpointError(f"'{folder}' holds a {index.get('_class_name')}, not an SDXL pipeline")
    missing, unsafe = [], []
    for name in MODEL_COMPONENTS:
        m, u = _weight_problems(folder, name)
        missing += m
        unsafe += u
    for name in ("tokenizer", "tokenizer_2"):
        sub = folder / name
        if not (sub / "tokenizer.json").is_file() and not all((sub / f).is_file() for f in BPE_FILES):
            missing.append(f"missing '{name}/tokenizer.json' (or '{name}/vocab.json' + '{name}/merges.txt')")
    if not (folder / "scheduler" / "scheduler_config.json").is_file():
        missing.append("missing 'scheduler/scheduler_config.json'")
    if missing or unsafe:
        error = UnsafeCheckpointError if unsafe else CheckpointError
        raise error(f"SDXL model folder '{folder}' cannot be loaded: " + "; ".join(missing + unsafe))
    return index


def check_single_file(path: Path, need_vae: bool = True) -> None:
    """The file must be safetensors and hold every SDXL component (the VAE may come apart) in LDM layout."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as exc:
        raise CheckpointError(f"'{path}' is not a readable .safetensors file: {exc}") from exc
    markers = {name: prefix for name, prefix in SINGLE_FILE_MARKERS.items() if need_vae or name != "VAE"}
    absent = [name for name, prefix in markers.items() if not any(k.startswith(prefix) for k in keys)]
    if absent:
        raise CheckpointError(f"'{path}' is not an SDXL checkpoint: it has no {', no '.join(absent)} weights")


def _variant(folder: Path) -> str | None:
    unet = folder / "unet"
    plain = (unet / "diffusion_pytorch_model.safetensors").is_file() or any(unet.glob("*.safetensors.index.json"))
    return "fp16" if not plain and any(unet.glob("*.fp16.safetensors")) else None


def load_vae(path: Path, dtype: torch.dtype, config_dir: Path) -> AutoencoderKL:
    """A separate VAE (e.g. the fp16-fix one): a diffusers folder or one .safetensors file.

    A VAE given on its own is decoded in `dtype` (fp16 on CUDA); a NaN/black result is decoded again in fp32.
    """
    _refuse_pickle(path, "VAE")
    if not path.exists():
        raise CheckpointError(f"VAE '{path}': not found")
    try:
        if path.is_dir():
            missing, unsafe = _weight_problems(path.parent, path.name)
            if missing or unsafe:
                error = UnsafeCheckpointError if unsafe else CheckpointError
                raise error(f"VAE folder '{path}' cannot be loaded: " + "; ".join(missing + unsafe))
            vae = AutoencoderKL.from_pretrained(path, torch_dtype=dtype, use_safetensors=True, local_files_only=True)
        elif path.suffix.lower() == ".safetensors":
            vae = AutoencoderKL.from_single_file(
                str(path), config=str(config_dir), subfolder="vae", local_files_only=True, torch_dtype=dtype
            )
        else:
            raise CheckpointError(f"VAE '{path}': expected a folder or a .safetensors file")
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"VAE '{path}' cannot be loaded: {exc}") from exc
    vae.register_to_config(force_upcast=False)
    return vae


def load_pipeline(
    path: Path, dtype: torch.dtype, vae_path: Path | None = None, config_dir: Path | None = None
) -> StableDiffusionXLPipeline:
    """Load on the CPU in `dtype`. Single files use the SDXL configs shipped in assets/sdxl (or `config_dir`)."""
    config_dir = Path(config_dir) if config_dir is not None else SDXL_CONFIG_DIR
    _refuse_pickle(path, "SDXL model")
    if not path.exists():
        raise CheckpointError(f"SDXL model '{path}': not found")
    extra = {"add_watermarker": False}
    if vae_path is not None:
        extra["vae"] = load_vae(Path(vae_path), dtype, config_dir)
    try:
        if path.is_dir():
            check_folder(path)
            pipe = StableDiffusionXLPipeline.from_pretrained(
                path, torch_dtype=dtype, use_safetensors=True, local_files_only=True, variant=_variant(path), **extra
            )
        elif path.suffix.lower() == ".safetensors":
            if not (config_dir / "model_index.json").is_file():
                raise CheckpointError(f"SDXL config folder '{config_dir}': missing model_index.json")
            check_single_file(path, need_vae=vae_path is None)
            pipe = StableDiffusionXLPipeline.from_single_file(
                str(path), config=str(config_dir), local_files_only=True, torch_dtype=dtype, **extra
            )
        else:
            raise CheckpointError(f"SDXL model '{path}': expected a diffusers folder or a .safetensors file")
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"SDXL model '{path}' cannot be loaded: {exc}") from exc
    logger.info("loaded SDXL %s (%s)", path, dtype)
    return pipe
