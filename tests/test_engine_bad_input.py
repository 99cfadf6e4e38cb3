"""Bad input gets a clear error naming the thing and the reason; the engine keeps serving."""

from __future__ import annotations

import json
import shutil

import pytest

from engine import (
    CheckpointError,
    Engine,
    EngineConfig,
    InvalidRequestError,
    SamplingParams,
    UnsafeCheckpointError,
)
from tests.llm_fixtures import make_llama


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def engine(checkpoint):
    with Engine(EngineConfig(model=checkpoint, quantization="none", max_batch_size=2, max_seq_len=64)) as eng:
        yield eng


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
    ],
)
def test_bad_sampling_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_unknown_device_is_refused(checkpoint):
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        EngineConfig(model=checkpoint, device="tpu")


@pytest.mark.parametrize("share", [0, 1, 1.5, -0.2])
def test_render_sm_share_outside_zero_to_one_is_refused(checkpoint, engine, share):
    with pytest.raises(ValueError, match="render_sm_share: must be between 0 and 1"):
        EngineConfig(model=checkpoint, render_sm_share=share)
    with pytest.raises(InvalidRequestError, match="render_sm_share: must be between 0 and 1"):
        engine.set_render_sm_share(share)
    assert engine.config.render_sm_share is None


def test_render_sm_share_applies_between_jobs(engine):
    engine.set_render_sm_share(0.75).result(timeout=30)
    assert engine.config.render_sm_share == 0.75
    engine.set_render_sm_share(None).result(timeout=30)
    assert engine.config.render_sm_share is None


def test_unknown_kernels_choice_is_refused(checkpoint):
    with pytest.raises(ValueError, match="kernels: 'cutlass' is not one of auto, bitsandbytes, triton"):
        EngineConfig(model=checkpoint, kernels="cutlass")


def test_too_long_prompt_fails_alone_while_others_keep_running(checkpoint):
    with Engine(EngineConfig(model=checkpoint, quantization="none", max_batch_size=2, max_seq_len=64)) as eng:
        running = eng.submit("Once", SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
        with pytest.raises(InvalidRequestError, match=r"longer than the limit of 63 tokens"):
            eng.submit(list(range(64)))
        with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
            eng.submit([10**9])
        with pytest.raises(InvalidRequestError, match="chat message 0"):
            eng.submit([{"role": "user"}])
        assert eng.submit(list(range(63)), SamplingParams(max_tokens=5)).result().finish_reason == "length"
        assert running.result().finish_reason == "length"
        assert len(running.result().token_ids) == 40


def _copy(checkpoint, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(checkpoint, folder)
    return folder


def test_missing_folder_and_files_are_named(checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Engine(EngineConfig(model=tmp_path / "nope"))
    folder = _copy(checkpoint, tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json not found"):
        Engine(EngineConfig(model=folder))


def test_malformed_config_and_missing_tokenizer(checkpoint, tmp_path):
    folder = _copy(checkpoint, tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        Engine(EngineConfig(model=folder))
    cfg = json.loads((checkpoint / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_type 'gpt2' is not supported"):
        Engine(EngineConfig(model=folder))
    shutil.copy(checkpoint / "config.json", folder / "config.json")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer\.json not found"):
        Engine(EngineConfig(model=folder, quantization="none"))


def test_corrupt_safetensors_is_named(checkpoint, tmp_path):
    folder = _copy(checkpoint, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        Engine(EngineConfig(model=folder))


def test_pickle_only_checkpoint_is_refused_with_the_reason(checkpoint, tmp_path):
    folder = _copy(checkpoint, tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="safetensors only") as err:
        Engine(EngineConfig(model=folder))
    assert "pytorch_model.bin" in str(err.value)
    assert "arbitrary code" in str(err.value)
