"""Choose where the LLM and SDXL live while drawing: the first plan, in order of preference, that fits.

Estimated GPU peak of each plan while drawing (L = LLM total, W = SDXL weights, A = larger activation peak,
C = largest component plus its own activations, S = VAE + streamed UNet layer + activations):

| plan                     | SDXL on the GPU                  | LLM while drawing     | peak          |
|--------------------------|----------------------------------|-----------------------|---------------|
| "all resident"           | all weights                      | stays                 | L + W + A     |
| "sdxl model offload"     | one component at a time          | stays                 | L + C         |
| "swap llm while drawing" | one component at a time          | moved to CPU RAM      | C             |
| "sequential offload"     | streamed layer by layer          | stays if it fits      | (L +) S       |
| "cpu only"               | nothing (SDXL draws on the CPU)  | stays                 | L             |

The renderer applies the SDXL placement; the story pipeline reads `llm_offload_while_drawing` and draws inside
`Engine.parked()`, which moves the LLM to CPU RAM and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from engine.config import ModelFootprint
from engine.errors import InvalidRequestError
from engine.vram.memory import GiB, GpuMemory, SDXLFootprint

PLAN_NAMES = (
    "all resident",
    "sdxl model offload",
    "swap llm while drawing",
    "sequential offload",
    "cpu only",
)
PLACEMENTS = ("gpu", "model_offload", "sequential_offload", "cpu")
STREAMED_UNET_FRACTION = 20  # sequential offload holds about 1/20 of the UNet's weights at once


@dataclass(frozen=True)
class VramPlan:
    """A named plan with its estimates, for the renderer, the engine and the UI's memory bar."""

    name: str
    estimated_peak_bytes: int  # GPU bytes at the drawing peak, both models together
    llm_bytes: int  # LLM bytes on the GPU while drawing
    sdxl_bytes: int  # SDXL bytes on the GPU at the drawing peak
    total_bytes: int  # the card's memory (0 without a GPU): the memory bar's full length
    both_resident: bool  # LLM and all SDXL weights stay on the GPU together
    notes: tuple[str, ...]
    sdxl_placement: str  # one of PLACEMENTS: what the renderer applies
    usable_bytes: int  # what plans may fill: the card less a reserve, never more than was free
    llm_offload_while_drawing: bool  # the engine moves the LLM to CPU RAM for each render
    fits: bool
    fallback: VramPlan | None = field(default=None, repr=False, compare=False)  # the next level down

    def __post_init__(self) -> None:
        assert self.name in PLAN_NAMES and self.sdxl_placement in PLACEMENTS, (self.name, self.sdxl_placement)

    def lower_placement(self) -> VramPlan | None:
        """The next plan down that changes where SDXL lives (what the renderer can do on its own)."""
        plan = self.fallback
        while plan is not None and plan.sdxl_placement == self.sdxl_placement:
            plan = plan.fallback
        return plan


def _gb(num_bytes: int) -> str:
    return f"{num_bytes / GiB:.1f} GB"


def _component_peak(sdxl: SDXLFootprint) -> int:
    """Model offload: the largest of (component weights + the activations it makes)."""
    return max(
        sdxl.unet_bytes + sdxl.unet_activation_bytes,
        sdxl.vae_bytes + sdxl.vae_activation_bytes,
        sdxl.text_encoders_bytes,
    )


def _streamed_peak(sdxl: SDXLFootprint) -> int:
    """Sequential offload: the VAE stays resident, UNet layers stream in one at a time."""
    unet = sdxl.unet_bytes // STREAMED_UNET_FRACTION + sdxl.unet_activation_bytes
    return sdxl.vae_bytes + max(unet, sdxl.vae_activation_bytes)


def _make(
    name: str,
    placement: str,
    gpu: GpuMemory | None,
    llm_bytes: int,
    sdxl_bytes: int,
    *,
    swap: bool,
    notes: list[str],
    fallback: VramPlan | None,
) -> VramPlan:
    usable = gpu.usable_bytes if gpu else 0
    peak = llm_bytes + sdxl_bytes
    fits = placement == "cpu" or peak <= usable  # the LLM's own fit is the engine's concern
    if gpu:
        verdict = "fits" if fits else "does not fit"
        notes.append(f"{verdict}: estimated peak {_gb(peak)} of {_gb(usable)} usable ({_gb(gpu.total_bytes)} card)")
    return VramPlan(
        name=name,
        sdxl_placement=placement,
        estimated_peak_bytes=peak,
        llm_bytes=llm_bytes,
        sdxl_bytes=sdxl_bytes,
        total_bytes=gpu.total_bytes if gpu else 0,
        usable_bytes=usable,
        both_resident=placement == "gpu" and not swap,
        llm_offload_while_drawing=swap,
        fits=fits,
        notes=tuple(notes),
        fallback=fallback,
    )


def _plans(gpu: GpuMemory | None, llm: ModelFootprint, sdxl: SDXLFootprint) -> list[VramPlan]:
    """Every plan, best first, each linked to the next level down."""
    llm_gpu = llm.total_bytes if gpu else 0
    cpu_notes = ["SDXL draws on the CPU in float32: minutes per image."]
    if gpu is None:
        cpu_notes.append("No CUDA GPU found.")
    cpu = _make("cpu only", "cpu", gpu, llm_gpu, 0, swap=False, notes=cpu_notes, fallback=None)
    if gpu is None:
        return [cpu]
    streamed = _streamed_peak(sdxl)
    swap_for_sequential = llm_gpu + streamed > gpu.usable_bytes
    seq_notes = ["SDXL streams from CPU RAM layer by layer: little memory, much slower drawing."]
    if swap_for_sequential:
        seq_notes.append("The LLM moves to CPU RAM while drawing; text generation waits for the image.")
    sequential = _make(
        "sequential offload",
        "sequential_offload",
        gpu,
        0 if swap_for_sequential else llm_gpu,
        streamed,
        swap=swap_for_sequential,
        notes=seq_notes,
        fallback=cpu,
    )
    component = _component_peak(sdxl)
    swap = _make(
        "swap llm while drawing",
        "model_offload",
        gpu,
        0,
        component,
        swap=True,
        fallback=sequential,
        notes=[
            "The LLM moves to CPU RAM while drawing and returns after; text generation waits.",
            "SDXL components visit the GPU one at a time.",
        ],
    )
    offload = _make(
        "sdxl model offload",
        "model_offload",
        gpu,
        llm_gpu,
        component,
        swap=False,
        fallback=swap,
        notes=[
            f"The LLM stays ({_gb(llm_gpu)}); SDXL components visit the GPU one at a time "
            f"(UNet {_gb(sdxl.unet_bytes)} the largest)."
        ],
    )
    resident = _make(
        "all resident",
        "gpu",
        gpu,
        llm_gpu,
        sdxl.peak_bytes,
        swap=False,
        fallback=offload,
        notes=[
            f"LLM {_gb(llm_gpu)} and SDXL {_gb(sdxl.weights_bytes)} stay on the GPU; LLM steps interleave with drawing."
        ],
    )
    return [resident, offload, swap, sequential, cpu]


def plan_vram(gpu: GpuMemory | None, llm: ModelFootprint, sdxl: SDXLFootprint, override: str | None = None) -> VramPlan:
    """The first plan that fits, or the one `override` names (kept even if it does not fit, with a note)."""
    if override is not None and override not in PLAN_NAMES:
        raise InvalidRequestError(f"plan: unknown VRAM plan '{override}'; choose one of {', '.join(PLAN_NAMES)}")
    plans = _plans(gpu, llm, sdxl)
    if override is None:
        return next(p for p in plans if p.fits)
    chosen = next((p for p in plans if p.name == override), None)
    if chosen is None:  # only "cpu only" exists without a GPU
        cpu = plans[-1]
        return replace(cpu, notes=(*cpu.notes, f"Plan '{override}' needs a CUDA GPU; using 'cpu only'."))
    note = "Chosen by the user." if chosen.fits else "Chosen by the user although it may run out of memory."
    return replace(chosen, notes=(*chosen.notes, note))
