"""The Hugging Face hub source against a local fake hub: tree listing, file choice, gating, end to end."""

from __future__ import annotations

import hashlib
import random

import pytest

from storyloom.downloads import (
    LLAMA3_8B_INSTRUCT,
    SDXL_BASE,
    AccessDeniedError,
    DownloadError,
    DownloadManager,
    HubModel,
    HubSource,
)
from storyloom.downloads.__main__ import main as download_main
from tests.test_downloads_fakehub import FakeHub

LLAMA = "meta-llama/Meta-Llama-3-8B-Instruct"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
TOKEN = "hf_granted"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_entry(path: str, data: bytes) -> dict:
    sha = hashlib.sha256(data).hexdigest()
    return {
        "type": "file",
        "oid": git_blob_id(b"pointer " + path.encode()),
        "size": 134,
        "path": path,
        "lfs": {"oid": sha, "size": len(data), "pointerSize": 134},
    }


def plain_entry(path: str, data: bytes) -> dict:
    return {"type": "file", "oid": git_blob_id(data), "size": len(data), "path": path}


def publish(hub: FakeHub, repo: str, files: dict[str, bytes], lfs: set[str], extra: list[dict] = ()) -> None:
    """Serve `files` as the repo's main revision, with the tree listing split over two pages."""
    entries = [lfs_entry(p, d) if p in lfs else plain_entry(p, d) for p, d in files.items()]
    entries += list(extra)
    half = len(entries) // 2
    first, second = f"/api/models/{repo}/tree/main", f"/api/models/{repo}/tree-page-2"
    hub.pages[first] = entries[:half]
    hub.pages[second] = entries[half:]
    hub.next_links[first] = hub.url(second) + "?cursor=abc"
    for path, data in files.items():
        hub.files[f"/{repo}/resolve/main/{path}"] = data


def llama_files() -> dict[str, bytes]:
    rng = random.Random(1)
    return {
        "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
        "generation_config.json": b'{"eos_token_id": [128001, 128009]}',
        "model-00001-of-00002.safetensors": rng.randbytes(300_000),
        "model-00002-of-00002.safetensors": rng.randbytes(200_000),
        "model.safetensors.index.json": b'{"weight_map": {}}',
        "tokenizer.json": b'{"model": {"type": "BPE"}}',
        "tokenizer_config.json": b'{"chat_template": "..."}',
        "special_tokens_map.json": b"{}",
        "original/params.json": b'{"dim": 4096}',
        "original/consolidated.00.pth": b"pickle!",
        "pytorch_model.bin": b"pickle too",
        "README.md": b"# Llama 3",
        "LICENSE": b"license text",
    }


@pytest.fixture
def llama_hub(hub):
    files = llama_files()
    lfs = {p for p in files if p.endswith((".safetensors", ".pth", ".bin"))}
    publish(hub, LLAMA, files, lfs, extra=[{"type": "directory", "oid": "0" * 40, "size": 0, "path": "original"}])
    hub.gated[f"/{LLAMA}/resolve/"] = {TOKEN}
    return hub


WANTED_LLAMA = {
    "config.json",
    "generation_config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
}


def test_tree_listing_keeps_weights_configs_and_tokenizer_only(llama_hub):
    with HubSource(endpoint=llama_hub.url(""), token=TOKEN) as source:
        files = {f.path: f for f in source.list_files(LLAMA3_8B_INSTRUCT)}

    assert set(files) == WANTED_LLAMA
    data = llama_files()
    shard = files["model-00001-of-00002.safetensors"]
    assert shard.size == len(data[shard.path])
    assert shard.sha256 == hashlib.sha256(data[shard.path]).hexdigest() and shard.git_sha1 is None
    config = files["config.json"]
    assert config.sha256 is None and config.git_sha1 == git_blob_id(data["config.json"])
    assert shard.url == llama_hub.url(f"/{LLAMA}/resolve/main/model-00001-of-00002.safetensors")
    tree_gets = [r for r in llama_hub.requests if "/api/models/" in r.path]
    assert len(tree_gets) == 2  # both pages, following the Link header
    assert all(r.authorization == f"Bearer {TOKEN}" for r in tree_gets)


def test_gated_model_without_token_explains_the_license(llama_hub):
    with HubSource(endpoint=llama_hub.url(""), token=None) as source, pytest.raises(AccessDeniedError) as info:
        source.plan(LLAMA3_8B_INSTRUCT)
    message = str(info.value)
    assert "No Hugging Face token" in message and "Meta's Llama 3 Community License" in message
    assert llama_hub.url(f"/{LLAMA}") in message and "settings/tokens" in message
    assert llama_hub.requests == []


def test_gated_model_with_a_token_lacking_access_fails_before_downloading(llama_hub):
    with (
        HubSource(endpoint=llama_hub.url(""), token="hf_not_granted") as source,
        pytest.raises(AccessDeniedError) as info,
    ):
        source.plan(LLAMA3_8B_INSTRUCT)
    assert info.value.status == 403
    assert "must be accepted on" in str(info.value)
    assert not [r for r in llama_hub.requests if r.method == "GET" and "/resolve/" in r.path]


def test_gated_model_downloads_end_to_end_with_a_token(llama_hub, tmp_path):
    with HubSource(endpoint=llama_hub.url(""), token=TOKEN) as source:
        plan = source.plan(LLAMA3_8B_INSTRUCT)
    data = llama_files()
    assert plan.total_bytes == sum(len(data[p]) for p in WANTED_LLAMA)
    assert "8 files" in plan.describe() and TOKEN not in repr(plan)

    with DownloadManager(chunk_size=32 * 1024, retry_delay_s=0.0) as manager:
        manager.download(plan, tmp_path)
    assert {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()} == WANTED_LLAMA
    assert all((tmp_path / p).read_bytes() == data[p] for p in WANTED_LLAMA)
    downloads = [r for r in llama_hub.requests if r.method == "GET" and "/resolve/" in r.path]
    assert len(downloads) == len(WANTED_LLAMA)
    assert all(r.authorization == f"Bearer {TOKEN}" for r in downloads)


def test_sdxl_plan_is_the_single_checkpoint(hub, monkeypatch):
    checkpoint = random.Random(2).randbytes(100_000)
    files = {
        "sd_xl_base_1.0.safetensors": checkpoint,
        "sd_xl_base_1.0_0.9vae.safetensors": b"other weights",
        "unet/diffusion_pytorch_model.fp16.safetensors": b"unet",
        "unet/config.json": b"{}",
        "model_index.json": b"{}",
        "text_encoder/flax_model.msgpack": b"flax",
        "vae_decoder/model.onnx": b"onnx",
    }
    publish(hub, SDXL, files, lfs={p for p in files if not p.endswith(".json")})
    monkeypatch.setenv("HF_ENDPOINT", hub.url(""))
    with HubSource() as source:
        plan = source.plan(SDXL_BASE)
    assert [f.path for f in plan.files] == ["sd_xl_base_1.0.safetensors"]
    assert plan.files[0].sha256 == hashlib.sha256(checkpoint).hexdigest() and plan.total_bytes == len(checkpoint)
    assert plan.headers == {}


def test_token_and_endpoint_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    with HubSource() as source:
        assert source.endpoint == "http://127.0.0.1:9"
        assert source.headers == {"Authorization": "Bearer hf_env"}
        assert source.resolve_url(SDXL_BASE, "a b.json") == f"http://127.0.0.1:9/{SDXL}/resolve/main/a%20b.json"


def test_unknown_repo_and_unreachable_hub_are_clear(hub):
    with HubSource(endpoint=hub.url("")) as source, pytest.raises(DownloadError, match="not found on"):
        source.list_files(SDXL_BASE)
    with HubSource(endpoint="http://127.0.0.1:9") as source, pytest.raises(DownloadError, match="cannot reach"):
        source.list_files(SDXL_BASE)


def test_repo_without_the_expected_files_is_an_error(hub):
    publish(hub, SDXL, {"README.md": b"nothing here", "model.ckpt": b"pickle"}, lfs=set())
    with HubSource(endpoint=hub.url("")) as source, pytest.raises(DownloadError, match="none of the expected files"):
        source.list_files(SDXL_BASE)


def test_hub_model_validates_and_never_wants_pickles():
    with pytest.raises(ValueError, match="owner/name"):
        HubModel("x", "no-slash", "X", include=("*",))
    anything = HubModel("x", "o/n", "X", include=("*",))
    assert anything.wants("model.safetensors") and anything.wants("tokenizer.json")
    assert not anything.wants("model.bin") and not anything.wants("model.ckpt") and not anything.wants("x.pth")


def test_command_line_shows_the_plan_then_downloads(hub, tmp_path, capsys):
    checkpoint = random.Random(3).randbytes(50_000)
    publish(hub, SDXL, {"sd_xl_base_1.0.safetensors": checkpoint}, lfs={"sd_xl_base_1.0.safetensors"})
    endpoint = ["--endpoint", hub.url("")]

    assert download_main(["sdxl-base", "--dest", str(tmp_path), "--plan-only", *endpoint]) == 0
    assert "sd_xl_base_1.0.safetensors" in capsys.readouterr().out and not any(tmp_path.iterdir())

    assert download_main(["sdxl-base", "--dest", str(tmp_path), *endpoint]) == 0
    assert (tmp_path / "sd_xl_base_1.0.safetensors").read_bytes() == checkpoint

    assert download_main(["llama-3-8b-instruct", "--dest", str(tmp_path), *endpoint]) == 1
    assert "gated" in capsys.readouterr().err
