"""RenderParams validation, the SDXL buckets, PNG parameter chunks and the latent preview."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from engine.errors import InvalidRequestError
from engine.sdxl import SCHEDULERS, SDXL_BUCKETS, RenderParams, RenderResult
from engine.sdxl.preview import latents_to_preview


def test_defaults_are_sdxl_native():
    p = RenderParams("a lighthouse")
    assert (p.width, p.height, p.steps, p.guidance, p.seed, p.scheduler) == (1024, 1024, 30, 5.0, None, "euler")
    assert SCHEDULERS == ("euler", "euler_a", "dpmpp_2m_karras")


def test_buckets_are_the_sdxl_training_resolutions():
    assert set(SDXL_BUCKETS) == {
        (1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768), (768, 1344)
    }  # fmt: skip
    for w, h in SDXL_BUCKETS:
        assert RenderParams("x", width=w, height=h).width == w
        assert 0.9 < w * h / 1024**2 < 1.05


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("width", 1001),
        ("width", 504),
        ("width", 2056),
        ("width", "1024"),
        ("width", True),
        ("height", 1020),
        ("height", 256),
        ("height", 4096),
        ("steps", 0),
        ("steps", 151),
        ("steps", 2.5),
        ("guidance", -0.5),
        ("guidance", float("nan")),
        ("guidance", float("inf")),
        ("guidance", "5"),
        ("guidance", True),
        ("scheduler", "ddim"),
        ("scheduler", "Euler"),
        ("seed", -1),
        ("seed", 2**64),
        ("seed", 1.5),
        ("prompt", None),
        ("negative_prompt", 3),
    ],
)
def test_bad_values_name_the_field_and_the_value(field, value):
    kwargs = {"prompt": "a fox", field: value}
    with pytest.raises(InvalidRequestError) as info:
        RenderParams(**kwargs)
    assert f"{field}:" in str(info.value) and repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("width", 512), ("width", 2048), ("height", 520), ("steps", 1), ("steps", 150), ("guidance", 0),
     ("seed", 0), ("seed", 2**64 - 1), ("scheduler", "dpmpp_2m_karras")],
)  # fmt: skip
def test_bounds_are_inclusive(field, value):
    assert getattr(RenderParams("a fox", **{field: value}), field) == value


def test_every_problem_is_listed_at_once():
    with pytest.raises(InvalidRequestError) as info:
        RenderParams("a fox", width=7, steps=0, scheduler="plms")
    message = str(info.value)
    assert "width:" in message and "steps:" in message and "scheduler:" in message


def test_save_writes_parameters_into_png_text_chunks(tmp_path):
    params = {"prompt": "a snowy owl, 雪", "seed": 42, "steps": 3, "timings": {"total_s": 1.5}}
    result = RenderResult(image=Image.new("RGB", (16, 8), "red"), params=params)
    path = result.save(tmp_path / "owl.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["owl.png"]  # no temp file left behind
    with Image.open(path) as img:
        assert img.size == (16, 8)
        assert img.text["prompt"] == "a snowy owl, 雪"
        assert img.text["seed"] == "42"
        assert json.loads(img.text["timings"]) == {"total_s": 1.5}
        assert json.loads(img.text["storyloom"]) == params


def test_save_replaces_an_existing_file_whole(tmp_path):
    target = tmp_path / "a.png"
    target.write_bytes(b"old")
    RenderResult(image=Image.new("RGB", (4, 4)), params={"seed": 1}).save(target)
    with Image.open(target) as img:
        assert img.format == "PNG"


def test_preview_is_the_fixed_linear_map():
    latents = torch.zeros(1, 4, 3, 5)
    latents[0, 0] = 1.0  # channel 0 only: RGB = factors[0] + bias
    preview = latents_to_preview(latents)
    assert preview.size == (5, 3) and preview.mode == "RGB"
    expected = [round((v + 1) * 127.5) for v in (0.3651 + 0.1084, 0.4232 - 0.0175, 0.4341 - 0.0011)]
    assert list(preview.getpixel((2, 1))) == expected
