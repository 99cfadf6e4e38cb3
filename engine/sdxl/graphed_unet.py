"""GraphedUNet: replay the SDXL UNet step as one CUDA graph per input signature instead of ~1,500 launches.

Why not an `nn.Module` around the UNet: the pipeline and accelerate treat `pipe.unet` as the real
UNet2DConditionModel (`unet.config`, `unet.dtype`, `unet.add_embedding`, `pipe.components`, `save_pretrained`,
`enable_model_cpu_offload`'s hooks, which replace and later restore `unet.forward`). A wrapper module in its
place would have to proxy all of that, and offload hooks would attach to the wrapper instead of the weights.
So `pipe.unet` stays the UNet and only its *instance* `forward` is replaced, and only for the duration of one
render (`installed()`): nn.Module's `__call__` (with the forward hooks it runs) calls our `forward`, which
replays a graph or calls the forward that was in place before. Nothing outlives the render, so accelerate's
hooks, added and removed by later placements, never meet our patch.

A graph bakes in the addresses of the weights and of its static inputs: it is valid only while the weights
stay where they were at capture. The renderer installs the wrapper only where no offload hook moves them and
calls `release()` whenever it places the pipeline again; as a safety net, graphs captured for weights that
have since moved (a `.to()` that reallocated them) are dropped before use.

Everything the graph cannot replay faithfully runs the plain forward (`eager_reason` says why): gradients on,
tensors off CUDA, a Python-number timestep, any input other than sample, timestep, encoder_hidden_states and
added_cond_kwargs' text_embeds/time_ids (cross_attention_kwargs, timestep_cond, ControlNet residuals, masks),
a new signature once `max_graphs` are held, and any signature after a capture failed (until `release()`).
Capture is safe for diffusers' UNet2DConditionModel with tensor inputs on one device: its forward makes no
host synchronisation and no host-to-device copy (a Python-number timestep would: `torch.tensor([t],
device=...)` in `get_time_embed`, hence the fallback; a 0-d timestep is `t[None].to(device)`, a no-op there).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from engine.sdxl.placement import empty_cache

logger = logging.getLogger(__name__)

MAX_GRAPHS = 4  # 1024² at guidance > 1 and at guidance 1 (batch 2 and 1) plus two other sizes
ADDED_INPUTS = ("text_embeds", "time_ids")  # SDXL's added_cond_kwargs
PASSED_THROUGH = ("added_cond_kwargs", "return_dict")  # keyword inputs the graph handles; others must be None


@dataclass
class UNetGraph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]  # static buffers, named as in `graph_inputs`
    output: torch.Tensor  # noise prediction: [B, C, H/8, W/8]


def graph_inputs(
    sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, added: dict | None
) -> dict[str, torch.Tensor]:
    """The tensors a graph reads, by name: what `graph_key` describes and the static buffers hold."""
    inputs = {"sample": sample, "timestep": timestep, "encoder_hidden_states": encoder_hidden_states}
    inputs.update({f"added_cond_kwargs.{name}": t for name, t in sorted((added or {}).items())})
    return inputs


def graph_key(inputs: dict[str, torch.Tensor], has_added: bool) -> tuple:
    """One graph per (inference mode, added_cond_kwargs present, name/shape/dtype/device of every input)."""
    signature = tuple((name, tuple(t.shape), t.dtype, t.device) for name, t in inputs.items())
    return torch.is_inference_mode_enabled(), has_added, signature


def eager_reason(
    sample: Any, timestep: Any, encoder_hidden_states: Any, args: tuple, kwargs: dict[str, Any]
) -> str | None:
    """Why this call must run the plain forward, or None when a graph can replay it."""
    if torch.is_grad_enabled():
        return "gradients enabled"
    if args:
        return "positional inputs after encoder_hidden_states"
    extra = sorted(name for name, value in kwargs.items() if name not in PASSED_THROUGH and value is not None)
    if extra:
        return f"inputs a graph does not take: {', '.join(extra)}"
    added = kwargs.get("added_cond_kwargs")
    if added is not None and (
        set(added) - set(ADDED_INPUTS) or not all(isinstance(t, torch.Tensor) for t in added.values())
    ):
        return f"added_cond_kwargs other than tensors {', '.join(ADDED_INPUTS)}"
    if not isinstance(timestep, torch.Tensor):
        return "timestep is not a tensor"
    if not isinstance(sample, torch.Tensor) or not isinstance(encoder_hidden_states, torch.Tensor):
        return "sample or encoder_hidden_states is not a tensor"
    devices = {t.device for t in graph_inputs(sample, timestep, encoder_hidden_states, added).values()}
    if len(devices) > 1:
        return "inputs on several devices"
    if next(iter(devices)).type != "cuda":
        return f"inputs on {next(iter(devices)).type}"
    return None


class GraphedUNet:
    """Replays `unet`'s forward from CUDA graphs while `installed()`; see the module docstring."""

    def __init__(self, unet: UNet2DConditionModel, max_graphs: int = MAX_GRAPHS) -> None:
        self.unet = unet
        self.max_graphs = max_graphs
        self.num_captures = 0
        self.num_replays = 0
        self.eager_calls: Counter[str] = Counter()  # reason -> plain forward calls
        self._eager: Callable[..., Any] = unet.forward
        self._graphs: dict[tuple, UNetGraph] = {}
        self._pool: tuple | None = None
        self._capture_error: str | None = None
        self._weights: list[tuple[torch.nn.Parameter, int]] = []  # probes of where the captured weights live

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Route calls of `unet` through `forward` until the block ends; the forward in place is the eager one."""
        unet = self.unet
        previous = unet.__dict__.get("forward")  # an instance forward (a hook's) or None (the class's)
        self._eager = unet.forward
        unet.forward = self.forward
        try:
            yield
        finally:
            if unet.__dict__.get("forward") == self.forward:  # not replaced meanwhile (by an offload hook)
                if previous is None:
                    del unet.forward
                else:
                    unet.forward = previous
            self._eager = unet.forward

    def release(self) -> None:
        """Drop every graph and its memory pool, and allow captures again after a failed one."""
        had_graphs = bool(self._graphs)
        self._drop_graphs()
        self._capture_error = None
        if had_graphs:
            empty_cache()
            logger.info("released the UNet's CUDA graphs")

    def forward(self, sample: Any, timestep: Any, encoder_hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        """Same inputs and outputs as UNet2DConditionModel.forward."""
        found = self._graph_for(sample, timestep, encoder_hidden_states, args, kwargs)
        if isinstance(found, str):
            self.eager_calls[found] += 1
            return self._eager(sample, timestep, encoder_hidden_states, *args, **kwargs)
        graph, inputs = found
        for name, buffer in graph.inputs.items():
            buffer.copy_(inputs[name], non_blocking=True)
        graph.graph.replay()
        self.num_replays += 1
        noise = graph.output.clone()  # [B, C, H/8, W/8]; the next replay overwrites graph.output
        return UNet2DConditionOutput(sample=noise) if kwargs.get("return_dict", True) else (noise,)

    def _graph_for(
        self, sample: Any, timestep: Any, encoder_hidden_states: Any, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[UNetGraph, dict[str, torch.Tensor]] | str:
        """The graph for these inputs (captured on first use) with the inputs by name, or why there is none."""
        reason = eager_reason(sample, timestep, encoder_hidden_states, args, kwargs)
        if reason is not None:
            return reason
        added = kwargs.get("added_cond_kwargs")
        inputs = graph_inputs(sample, timestep, encoder_hidden_states, added)
        key = graph_key(inputs, added is not None)
        if self._weights and any(p.data_ptr() != ptr for p, ptr in self._weights):
            logger.info("the UNet's weights moved since capture; dropping its CUDA graphs")
            self.release()
        if key not in self._graphs:
            if self._capture_error is not None:
                return f"capture failed earlier: {self._capture_error}"
            if len(self._graphs) >= self.max_graphs:
                return f"graph cache full ({self.max_graphs} graphs)"
            if not self._capture(key, inputs, added is not None):
                return f"capture failed: {self._capture_error}"
        return self._graphs[key], inputs

    def _call_static(self, inputs: dict[str, torch.Tensor], has_added: bool) -> torch.Tensor:
        added = {k.removeprefix("added_cond_kwargs."): t for k, t in inputs.items() if k.startswith("added_")}
        return self._eager(
            inputs["sample"],
            inputs["timestep"],
            inputs["encoder_hidden_states"],
            added_cond_kwargs=added if has_added else None,
            return_dict=False,
        )[0]

    def _capture(self, key: tuple, inputs: dict[str, torch.Tensor], has_added: bool) -> bool:
        """Capture a graph for `key` on static copies of `inputs`. False if that failed (uncapturable, out of
        memory): then every graph is dropped so the plain forward has the memory, and no capture is tried again
        until `release()`."""
        static = {name: t.clone() for name, t in inputs.items()}
        try:
            graph, output = self._record(static, has_added)
        except Exception as exc:
            self._capture_error = f"{type(exc).__name__}: {exc}"
            logger.warning("CUDA graph capture of the UNet failed; running it eagerly: %s", self._capture_error)
            self._drop_graphs()
            empty_cache()
            return False
        if not self._weights:
            params = list(self.unet.parameters())
            self._weights = [(p, p.data_ptr()) for p in (params[0], params[-1])]
        self._graphs[key] = UNetGraph(graph, static, output)
        self.num_captures += 1
        shapes = ", ".join(f"{name} {list(t.shape)}" for name, t in static.items())
        logger.info("captured a UNet CUDA graph for %s", shapes)
        return True

    def _record(self, static: dict[str, torch.Tensor], has_added: bool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Warm up twice on a side stream (lazy inits, autotuning), then capture one forward reading `static`."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._call_static(static, has_added)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: a CUDA call on another thread (a GUI memory poll) must not void this capture
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            output = self._call_static(static, has_added)  # [B, C, H/8, W/8], in the graph's pool
        return graph, output

    def _drop_graphs(self) -> None:
        self._graphs.clear()
        self._pool = None
        self._weights = []
