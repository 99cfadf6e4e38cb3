"""SDXL loading: diffusers folder and single-file (LDM layout, offline configs), refusals, shipped assets."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from assets import ASSETS_DIR
from engine.errors import CheckpointError, InvalidRequestError, UnsafeCheckpointError
from engine.sdxl import RenderParams, SDXLRenderer
from storyloom.demo.tiny_sdxl import build_tiny_sdxl, build_tiny_sdxl_pipeline, copy_configs, save_single_file

SDXL = ASSETS_DIR / "sdxl"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The tiny models' ops are too small to gain from threads; on a busy 2-core box threads cost 5-10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_sdxl")
    folder = build_tiny_sdxl(root / "tiny-sdxl", seed=0)
    single = save_single_file(build_tiny_sdxl_pipeline(seed=0), root / "tiny-sdxl.safetensors")
    configs = copy_configs(folder, root / "tiny-configs")
    return folder, single, configs


def _copy(folder, dest):
    return shutil.copytree(folder, dest)


def test_folder_loads_in_fp32_on_cpu(tiny):
    folder, _, _ = tiny
    r = SDXLRenderer.load(folder, device="cpu")
    assert r.model_id == "tiny-sdxl" and r.device == "cpu"
    assert r.plan.name == "cpu only"
    assert {m.dtype for m in (r.pipeline.unet, r.pipeline.vae, r.pipeline.text_encoder_2)} == {torch.float32}


def test_single_file_loads_the_same_weights_and_draws_the_same_image(tiny):
    folder, single, configs = tiny
    from_folder = SDXLRenderer.load(folder)
    from_file = SDXLRenderer.load(single, config_dir=configs)
    assert from_file.model_id == "tiny-sdxl"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a = getattr(from_folder.pipeline, name).state_dict()
        b = getattr(from_file.pipeline, name).state_dict()
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
    params = RenderParams("a red kite over the sea", width=512, height=512, steps=2, seed=11)
    image_a = np.asarray(from_folder.render(params).image)
    image_b = np.asarray(from_file.render(params).image)
    assert np.array_equal(image_a, image_b)


def test_single_file_reads_the_shipped_configs_by_default(tiny):
    """Without config_dir the real SDXL configs are used: the tiny weights do not fit them, said clearly."""
    _, single, _ = tiny
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        SDXLRenderer.load(single)


def test_separate_vae_folder(tiny, tmp_path):
    folder, _, _ = tiny
    vae_dir = shutil.copytree(folder / "vae", tmp_path / "my-vae")
    r = SDXLRenderer.load(folder, vae_path=vae_dir)
    assert r.pipeline.vae.config.force_upcast is False
    assert torch.equal(
        r.pipeline.vae.decoder.conv_out.weight, AutoencoderKL.from_pretrained(vae_dir).decoder.conv_out.weight
    )


def test_separate_vae_single_file(tiny):
    folder, _, configs = tiny
    vae_file = folder / "vae" / "diffusion_pytorch_model.safetensors"
    r = SDXLRenderer.load(folder, vae_path=vae_file, config_dir=configs)
    expected = AutoencoderKL.from_pretrained(folder / "vae").state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in r.pipeline.vae.state_dict().items())
    assert r.pipeline.vae.config.force_upcast is False  # a VAE given apart is tried in fp16 first on CUDA


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt", ".pth"])
def test_pickle_checkpoints_are_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not even opened")
    with pytest.raises(UnsafeCheckpointError, match=r"\.safetensors only"):
        SDXLRenderer.load(path)


def test_pickle_vae_is_refused(tiny, tmp_path):
    folder, _, _ = tiny
    vae = tmp_path / "vae.pt"
    vae.write_bytes(b"x")
    with pytest.raises(UnsafeCheckpointError, match="VAE"):
        SDXLRenderer.load(folder, vae_path=vae)


def test_missing_path_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere\.safetensors': not found"):
        SDXLRenderer.load(tmp_path / "nowhere.safetensors")


def test_folder_without_model_index(tiny, tmp_path):
    copy = _copy(tiny[0], tmp_path / "m")
    (copy / "model_index.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing model_index\.json"):
        SDXLRenderer.load(copy)


def test_every_missing_file_is_named_at_once(tiny, tmp_path):
    copy = _copy(tiny[0], tmp_path / "m")
    (copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (copy / "text_encoder_2" / "config.json").unlink()
    shutil.rmtree(copy / "tokenizer")
    (copy / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(CheckpointError) as info:
        SDXLRenderer.load(copy)
    message = str(info.value)
    assert not isinstance(info.value, UnsafeCheckpointError)
    for name in ("unet/*.safetensors", "text_encoder_2/config.json", "tokenizer/tokenizer.json",
                 "scheduler/scheduler_config.json"):  # fmt: skip
        assert name in message


def test_folder_with_only_pickle_weights_is_refused(tiny, tmp_path):
    copy = _copy(tiny[0], tmp_path / "m")
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(UnsafeCheckpointError, match=r"unet/' has only pickle weights \(diffusion_pytorch_model.bin\)"):
        SDXLRenderer.load(copy)


def test_non_sdxl_folder_is_refused(tiny, tmp_path):
    copy = _copy(tiny[0], tmp_path / "m")
    (copy / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    with pytest.raises(CheckpointError, match="not an SDXL pipeline"):
        SDXLRenderer.load(copy)


def test_non_sdxl_single_file_names_what_is_missing(tmp_path):
    path = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not an SDXL checkpoint: it has no CLIP-L text encoder, no Open"):
        SDXLRenderer.load(path)


def test_corrupt_single_file(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match=r"not a readable \.safetensors file"):
        SDXLRenderer.load(path)


def test_unknown_file_type(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"expected a diffusers folder or a \.safetensors file"):
        SDXLRenderer.load(path)


@pytest.mark.parametrize(("device", "match"), [("tpu", "unknown device 'tpu'"), ("cuda", "no CUDA GPU")])
def test_bad_device(tiny, device, match):
    if torch.cuda.is_available() and device == "cuda":
        pytest.skip("a GPU is present")
    with pytest.raises(InvalidRequestError, match=match):
        SDXLRenderer.load(tiny[0], device=device)


def test_footprint_counts_the_loaded_weights(tiny):
    r = SDXLRenderer.load(tiny[0])
    pipe = r.pipeline
    fp = r.footprint(1024, 1024)
    assert fp.unet_bytes == 4 * sum(p.numel() for p in pipe.unet.parameters())
    text_params = sum(p.numel() for m in (pipe.text_encoder, pipe.text_encoder_2) for p in m.parameters())
    assert fp.text_encoders_bytes == pytest.approx(4 * text_params, rel=1e-3)  # + position-id buffers
    small = r.footprint(512, 512)
    assert small.unet_activation_bytes * 4 == pytest.approx(fp.unet_activation_bytes, rel=1e-6)
    assert (small.width, small.height) == (512, 512)


def test_shipped_tokenizers_are_clip():
    """Known CLIP ids (openai/clip-vit-large-patch14) for a known sentence; bigG's tokenizer pads with '!'."""
    tok = CLIPTokenizer.from_pretrained(SDXL / "tokenizer")
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok) == 49408 and tok.model_max_length == 77
    tok2 = CLIPTokenizer.from_pretrained(SDXL / "tokenizer_2")
    assert tok2.pad_token_id == 0 and tok2.pad_token == "!"
    for name in ("vocab.json", "merges.txt"):
        assert (SDXL / "tokenizer" / name).stat().st_size < 2 * 1024**2


def test_shipped_configs_have_sdxl_base_parameter_counts():
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SDXL / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SDXL / "vae"))
        clip_l = CLIPTextModel(CLIPTextConfig.from_pretrained(SDXL / "text_encoder"))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(SDXL / "text_encoder_2"))
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, clip_l, clip_g)]
    assert counts == [2_567_463_684, 83_653_863, 123_060_480, 694_659_840]
