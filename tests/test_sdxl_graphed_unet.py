"""GraphedUNet: graph keys, fallback rules, the graph cache's bookkeeping, and the renderer with graphs on/off.

On the CPU every call falls back to the plain forward; the cache's bookkeeping (static buffers, cache limit,
failed captures, moved weights, release on plan changes) runs with `ReplayOnCPU` standing in for a captured
graph. The CUDA tests at the end capture real graphs and skip without a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.sdxl import RenderParams, SDXLRenderer
from engine.sdxl import graphed_unet as gu
from engine.sdxl.graphed_unet import GraphedUNet, eager_reason, graph_inputs, graph_key
from engine.sdxl.renderer import NO_LLM
from engine.vram import GpuMemory, plan_vram
from storyloom.demo.tiny_sdxl import TEXT_2_PROJECTION, build_tiny_sdxl, build_tiny_sdxl_pipeline

GiB = 1024**3
SMALL = {"width": 512, "height": 512, "steps": 3}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The tiny models' ops are too small to gain from threads; on a busy 2-core box threads cost 5-10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def unet():
    return build_tiny_sdxl_pipeline(seed=0).unet.eval()


def unet_inputs(unet, batch: int = 2, size: int = 16, seed: int = 0, device: str = "cpu") -> dict:
    """What the SDXL pipeline passes its UNet for one step (keyword form), random but seeded."""
    g = torch.Generator().manual_seed(seed)
    dtype = unet.dtype
    time_ids = torch.tensor([[size * 8, size * 8, 0, 0, size * 8, size * 8]] * batch, dtype=dtype)
    inputs = {
        "sample": torch.randn(batch, unet.config.in_channels, size, size, generator=g, dtype=dtype),
        "timestep": torch.tensor(float(torch.randint(0, 1000, (), generator=g))),
        "encoder_hidden_states": torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g, dtype=dtype),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(batch, TEXT_2_PROJECTION, generator=g, dtype=dtype),
            "time_ids": time_ids,
        },
    }
    return _to(inputs, device)


def _to(inputs: dict, device: str) -> dict:
    added = {k: t.to(device) for k, t in inputs["added_cond_kwargs"].items()}
    return {**{k: t.to(device) for k, t in inputs.items() if k != "added_cond_kwargs"}, "added_cond_kwargs": added}


def call(unet, inputs: dict, **extra):
    """The call the SDXL pipeline makes (`extra` overrides its keywords)."""
    kwargs = {
        "encoder_hidden_states": inputs["encoder_hidden_states"],
        "timestep_cond": None,
        "cross_attention_kwargs": None,
        "added_cond_kwargs": inputs["added_cond_kwargs"],
        "return_dict": False,
    }
    return unet(inputs["sample"], inputs["timestep"], **{**kwargs, **extra})[0]


def _key(inputs: dict) -> tuple:
    added = inputs["added_cond_kwargs"]
    tensors = graph_inputs(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"], added)
    return graph_key(tensors, added is not None)


# --- keys and fallback rules ---------------------------------------------------------------------------------


def test_graph_key_follows_every_input_signature_not_values(unet):
    base = unet_inputs(unet)
    assert _key(base) == _key(unet_inputs(unet, seed=1))  # other values, same graph
    with torch.inference_mode():
        in_inference_mode = _key(base)
    assert in_inference_mode != _key(base)  # inference tensors need static buffers of their own
    changed = [
        {**base, "sample": base["sample"][:1]},
        {**base, "sample": torch.zeros(2, 4, 16, 24)},
        {**base, "sample": base["sample"].double()},
        {**base, "timestep": base["timestep"][None]},  # 0-d and 1-d timesteps
        {**base, "timestep": base["timestep"].long()},
        {**base, "encoder_hidden_states": base["encoder_hidden_states"][:, :10]},
        {**base, "added_cond_kwargs": {**base["added_cond_kwargs"], "time_ids": torch.zeros(2, 6, dtype=torch.int64)}},
        {**base, "added_cond_kwargs": {"text_embeds": base["added_cond_kwargs"]["text_embeds"]}},
        {**base, "added_cond_kwargs": None},
        {**base, "added_cond_kwargs": {}},
        _to(base, "meta"),
    ]
    keys = [_key(inputs) for inputs in changed]
    assert len(set(keys)) == len(keys) and _key(base) not in keys


def _reason(inputs: dict, *args, **extra) -> str | None:
    kwargs = {"added_cond_kwargs": inputs["added_cond_kwargs"], "return_dict": False, **extra}
    return eager_reason(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"], args, kwargs)


def test_fallback_reasons(unet):
    inputs = unet_inputs(unet)
    with torch.no_grad():
        assert _reason(inputs) == "inputs on cpu"
        assert _reason(_to(inputs, "meta"), timestep_cond=None, cross_attention_kwargs=None) == "inputs on meta"
        assert _reason({**_to(inputs, "meta"), "timestep": inputs["timestep"]}) == "inputs on several devices"
        assert _reason(inputs, cross_attention_kwargs={"scale": 0.5}) == (
            "inputs a graph does not take: cross_attention_kwargs"
        )
        assert _reason(inputs, timestep_cond=torch.zeros(2, 4), attention_mask=torch.ones(2, 77)) == (
            "inputs a graph does not take: attention_mask, timestep_cond"
        )
        assert _reason(inputs, None) == "positional inputs after encoder_hidden_states"
        assert _reason({**inputs, "timestep": 999}) == "timestep is not a tensor"
        odd = {**inputs, "added_cond_kwargs": {**inputs["added_cond_kwargs"], "image_embeds": torch.zeros(2, 4)}}
        assert _reason(odd) == "added_cond_kwargs other than tensors text_embeds, time_ids"
    assert _reason(inputs) == "gradients enabled"


def test_on_the_cpu_the_wrapper_is_the_plain_call_bit_for_bit(unet):
    inputs = unet_inputs(unet)
    with torch.no_grad():
        expected = call(unet, inputs)
        graphed = GraphedUNet(unet)
        with graphed.installed():
            assert unet.forward == graphed.forward
            ours = call(unet, inputs)
            as_dict = unet(**inputs)  # return_dict defaults to True: the diffusers output object
        assert "forward" not in unet.__dict__  # the class's forward again
    assert torch.equal(ours, expected) and torch.equal(as_dict.sample, expected)
    assert type(as_dict).__name__ == "UNet2DConditionOutput"
    assert graphed.eager_calls == {"inputs on cpu": 2} and graphed.num_graphs == graphed.num_replays == 0


def test_installed_keeps_an_existing_instance_forward_and_the_modules_hooks(unet):
    calls = []
    hooked = unet.forward

    def instance_forward(*args, **kwargs):  # as accelerate's offload hook sets one
        calls.append("hook")
        return hooked(*args, **kwargs)

    unet.forward = instance_forward
    handle = unet.register_forward_hook(lambda *_: calls.append("forward hook"))
    graphed = GraphedUNet(unet)
    with torch.no_grad(), graphed.installed():
        call(unet, unet_inputs(unet))
    handle.remove()
    assert calls == ["hook", "forward hook"] and unet.forward is instance_forward


# --- the cache's bookkeeping, with a stand-in for captured graphs -------------------------------------------


class ReplayOnCPU:
    """Stands in for a captured CUDA graph: `replay` recomputes the UNet from the static buffers into the static
    output, so results are right only if the inputs were copied into those buffers."""

    def __init__(self, run) -> None:
        self.run = run
        self.output = run()

    def replay(self) -> None:
        self.output.copy_(self.run())


@pytest.fixture
def cpu_graphs(monkeypatch):
    """Let CPU inputs take the graph path, recording `ReplayOnCPU` graphs; `fail` makes the next capture fail."""
    fail: list[Exception] = []
    reason = gu.eager_reason

    def record(self, static, has_added):
        if fail:
            raise fail.pop()
        graph = ReplayOnCPU(lambda: self._call_static(static, has_added))
        return graph, graph.output

    monkeypatch.setattr(gu, "eager_reason", lambda *a: None if reason(*a) == "inputs on cpu" else reason(*a))
    monkeypatch.setattr(GraphedUNet, "_record", record)
    return fail


def test_replays_read_each_calls_inputs_and_return_clones(unet, cpu_graphs):
    graphed = GraphedUNet(unet)
    steps = [unet_inputs(unet, seed=s) for s in range(3)]
    with torch.no_grad():
        expected = [call(unet, inputs) for inputs in steps]
        with graphed.installed():
            ours = [call(unet, inputs) for inputs in steps]
    assert all(torch.equal(a, b) for a, b in zip(ours, expected, strict=True))
    assert (graphed.num_captures, graphed.num_graphs, graphed.num_replays, graphed.eager_calls) == (1, 1, 3, {})


def test_signatures_past_the_cache_and_cpu_fallbacks_run_the_plain_call(unet, cpu_graphs):
    graphed = GraphedUNet(unet, max_graphs=2)
    sizes = [unet_inputs(unet, size=s) for s in (8, 16, 24)]
    with torch.no_grad():
        expected = [call(unet, inputs) for inputs in sizes]
        with graphed.installed():
            ours = [call(unet, inputs) for inputs in sizes + sizes[:1]]
            call(unet, sizes[0], cross_attention_kwargs={})
    assert all(torch.equal(a, b) for a, b in zip(ours, expected + expected[:1], strict=True))
    assert (graphed.num_captures, graphed.num_replays) == (2, 3)
    assert graphed.eager_calls == {
        "graph cache full (2 graphs)": 1,
        "inputs a graph does not take: cross_attention_kwargs": 1,
    }


def test_a_failed_capture_drops_the_graphs_and_stops_capturing_until_release(unet, cpu_graphs):
    graphed = GraphedUNet(unet)
    small, large = unet_inputs(unet, size=8), unet_inputs(unet, size=16)
    with torch.no_grad(), graphed.installed():
        call(unet, small)
        cpu_graphs.append(torch.OutOfMemoryError("CUDA out of memory (simulated)"))
        expected = call(unet, large)
        call(unet, small)
        assert graphed.num_graphs == 0
        graphed.release()
        assert torch.equal(call(unet, large), expected)
    error = "OutOfMemoryError: CUDA out of memory (simulated)"
    assert graphed.eager_calls == {f"capture failed: {error}": 1, f"capture failed earlier: {error}": 1}
    assert (graphed.num_captures, graphed.num_graphs) == (2, 1)


def test_graphs_of_moved_weights_are_dropped_and_captured_again(unet, cpu_graphs):
    graphed = GraphedUNet(unet)
    inputs = unet_inputs(unet)
    with torch.no_grad(), graphed.installed():
        call(unet, inputs)
        weight = unet.conv_in.weight  # the first parameter: a probe
        weight.data = weight.data.clone()
        ours = call(unet, inputs)
    with torch.no_grad():
        assert torch.equal(ours, call(unet, inputs))
    assert (graphed.num_captures, graphed.num_graphs, graphed.num_replays) == (2, 1, 2)


# --- in the renderer -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl", seed=1)


def _pixels(result) -> np.ndarray:
    return np.asarray(result.image).astype(np.int16)


def test_renderer_draws_the_same_image_with_graphs_on_and_off_on_the_cpu(folder):
    r = SDXLRenderer.load(folder, device="cpu")
    params = RenderParams("a lighthouse", negative_prompt="fog", seed=4, **SMALL)
    graphed = r.render(params)
    assert r.graphed_unet.eager_calls == {"inputs on cpu": SMALL["steps"]}  # the wrapper was in the call path
    r.use_cuda_graphs = False
    plain = r.render(params)
    assert r.graphed_unet.eager_calls == {"inputs on cpu": SMALL["steps"]}  # not installed
    assert np.array_equal(_pixels(graphed), _pixels(plain)) and _pixels(plain).std() > 1
    assert "forward" not in r.pipeline.unet.__dict__


@pytest.fixture
def resident_renderer(folder, monkeypatch, cpu_graphs):
    """A CPU renderer that believes it holds the "all resident" plan on CUDA, with stand-in graphs."""
    r = SDXLRenderer.load(folder, device="cpu")
    placements = []
    monkeypatch.setattr(
        "engine.sdxl.renderer.apply_placement", lambda pipe, placement, device: placements.append(placement)
    )
    r.device = "cuda:0"
    r.apply_plan(plan_vram(GpuMemory(24 * GiB), NO_LLM, r.footprint(), override="all resident"))
    return r, placements


def test_graphs_replay_every_step_and_are_kept_across_renders(resident_renderer, folder):
    r, _ = resident_renderer
    params = RenderParams("a lighthouse", seed=4, **SMALL)
    first, second = r.render(params), r.render(RenderParams("a harbour", seed=5, **SMALL))
    g = r.graphed_unet
    assert (g.num_captures, g.num_graphs, g.num_replays, g.eager_calls) == (1, 1, 2 * SMALL["steps"], {})
    eager = SDXLRenderer.load(folder, device="cpu")
    eager.use_cuda_graphs = False
    assert np.array_equal(_pixels(first), _pixels(eager.render(params)))
    assert not np.array_equal(_pixels(first), _pixels(second))


def test_plan_changes_and_oom_release_the_graphs(resident_renderer):
    r, placements = resident_renderer
    params = RenderParams("a mill", seed=8, **SMALL)
    r.render(params)
    r.apply_plan(plan_vram(GpuMemory(24 * GiB), NO_LLM, r.footprint(), override="all resident"))
    assert r.graphed_unet.num_graphs == 0
    r.render(params)
    failed = []

    def oom_once(*_):
        if not failed:
            failed.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    handle = r.pipeline.unet.register_forward_pre_hook(oom_once)
    try:
        res = r.render(params)
    finally:
        handle.remove()
    assert placements == ["gpu", "gpu", "model_offload"] and res.params["plan"] == "sdxl model offload"
    g = r.graphed_unet
    assert g.num_graphs == 0 and g.num_captures == 2  # offloaded weights move: no graphs, not even installed
    assert g.eager_calls == {}


def test_release_graphs(resident_renderer):
    r, _ = resident_renderer
    r.render(RenderParams("a mill", seed=8, **SMALL))
    r.release_graphs()
    assert r.graphed_unet.num_graphs == 0


# --- CUDA: real captures -------------------------------------------------------------------------------------


@CUDA
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_cuda_replay_matches_eager_bit_for_bit(unet, mode):
    unet = unet.to("cuda", torch.float16)
    steps = [unet_inputs(unet, seed=s, device="cuda") for s in range(4)]
    graphed = GraphedUNet(unet)
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with context():
        expected = [call(unet, inputs) for inputs in steps]
        with graphed.installed():
            ours = [call(unet, inputs) for inputs in steps]
            as_dict = unet(**steps[0])
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(ours, expected, strict=True))
    assert torch.equal(as_dict.sample, expected[0])
    assert (graphed.num_captures, graphed.num_replays, graphed.eager_calls) == (1, 5, {})
    graphed.release()
    assert graphed.num_graphs == 0


@CUDA
def test_cuda_renderer_same_image_with_and_without_graphs(folder):
    r = SDXLRenderer.load(folder, device="cuda", plan="all resident")
    assert r.plan.sdxl_placement == "gpu"
    params = RenderParams("a lighthouse", negative_prompt="fog", seed=4, **SMALL)
    with torch.inference_mode():
        graphed = [r.render(params), r.render(params)]
        r.use_cuda_graphs = False
        plain = r.render(params)
    g = r.graphed_unet
    assert (g.num_captures, g.num_replays, g.eager_calls) == (1, 2 * SMALL["steps"], {})
    assert all(np.array_equal(_pixels(x), _pixels(plain)) for x in graphed)
