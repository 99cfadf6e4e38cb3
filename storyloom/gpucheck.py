"""GPU, driver and disk check before the heavy downloads: clear advice, never a hard gate.

Stdlib only. The installers run this file with the system Python before the app's venv exists
(`python -I storyloom/gpucheck.py --torch-index`); the app runs it as `python -m storyloom.gpucheck`.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

GB = 1000**3
MIB = 1024**2
TORCH_INDEX_BASE = "https://download.pytorch.org/whl/"

# The one table of PyTorch wheel builds, newest first: (lowest CUDA version the driver must support, tag).
# A wheel runs when the driver's CUDA version is at least the wheel's; older drivers get the CPU build.
CUDA_WHEEL_TABLE: tuple[tuple[tuple[int, int], str], ...] = (
    ((12, 8), "cu128"),
    ((12, 6), "cu126"),
    ((12, 4), "cu124"),
    ((12, 1), "cu121"),
    ((11, 8), "cu118"),
)
CPU_TAG = "cpu"

# What runs per VRAM size, largest first: (lowest total VRAM in MiB, advice). Plan names are the planner's.
VRAM_ADVICE: tuple[tuple[int, str], ...] = (
    (
        23 * 1024,
        "24 GB or more: everything stays on the GPU ('all resident'): Llama-3-8B in 4-bit with many adapters, "
        "SDXL at 1024x1024, long stories, several stories at once.",
    ),
    (
        15 * 1024,
        "16 GB class: Llama-3-8B 4-bit and SDXL both stay on the GPU ('all resident'); with very long "
        "contexts the planner moves to 'SDXL with model offload'.",
    ),
    (
        11 * 1024,
        "12 GB class: Llama-3-8B 4-bit stays on the GPU; SDXL runs with 'SDXL with model offload' "
        "(its parts visit the GPU while drawing). Images take a few seconds longer.",
    ),
    (
        7 * 1024,
        "8 GB class: the LLM moves to CPU memory while SDXL draws ('swap the LLM to CPU while drawing'). "
        "Stories are fast; each image adds a few seconds of swapping. 16 GB of system RAM recommended.",
    ),
    (
        5 * 1024 + 512,
        "6 GB class: Llama-3-8B 4-bit fits with a short context; SDXL needs 'sequential offload' "
        "(minutes per image). Smaller images (832x1216 or less) and fewer steps help.",
    ),
)
CPU_ADVICE = (
    "No usable NVIDIA GPU: Storyloom runs on the CPU ('CPU only'). It works, but a real-model story takes "
    "minutes and an SDXL image much longer; the demo models run fine."
)
SMALL_GPU_ADVICE = "Under 6 GB of VRAM: the 4-bit Llama-3-8B does not fit. " + CPU_ADVICE

# Approximate download sizes of the real models (safetensors only), for the disk check.
MODEL_DOWNLOAD_BYTES: dict[str, int] = {
    "Llama-3-8B-Instruct": 16_070_000_000,
    "SDXL base 1.0": 6_940_000_000,
}


@dataclass(frozen=True)
class GpuInfo:
    """One NVIDIA GPU as `nvidia-smi` reports it."""

    name: str
    memory_total_mib: int
    driver_version: str

    def __post_init__(self) -> None:
        if self.memory_total_mib < 0:
            raise ValueError(f"GPU '{self.name}': memory_total_mib must be >= 0, got {self.memory_total_mib}")

    @property
    def vram_gb(self) -> float:
        """VRAM in the binary gigabytes card makers use (8192 MiB is an '8 GB' card)."""
        return self.memory_total_mib / 1024


@dataclass(frozen=True)
class DriverReport:
    """What the NVIDIA driver says: GPUs, the CUDA version it supports, or why nothing was found."""

    gpus: tuple[GpuInfo, ...]
    cuda_version: tuple[int, int] | None
    problem: str = ""

    @property
    def best_gpu(self) -> GpuInfo | None:
        return max(self.gpus, key=lambda g: g.memory_total_mib, default=None)


@dataclass(frozen=True)
class DiskReport:
    """Free space where the models go, against what they need."""

    path: Path
    free_bytes: int
    needed_bytes: int

    @property
    def is_enough(self) -> bool:
        return self.free_bytes >= self.needed_bytes


def parse_gpu_csv(text: str) -> list[GpuInfo]:
    """Parse `nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader`."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.rsplit(",", 2)]
        memory = re.fullmatch(r"(\d+)\s*MiB", parts[1]) if len(parts) == 3 else None
        if memory is None:
            logger.warning("ignoring unreadable nvidia-smi line: %r", line)
            continue
        gpus.append(GpuInfo(name=parts[0], memory_total_mib=int(memory.group(1)), driver_version=parts[2]))
    return gpus


def parse_cuda_version(text: str) -> tuple[int, int] | None:
    """The highest CUDA version the driver supports, from the header of plain `nvidia-smi`."""
    match = re.search(r"CUDA Version\s*:\s*(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _run_nvidia_smi(args: Sequence[str]) -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise FileNotFoundError("nvidia-smi")
    done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError((done.stdout + done.stderr).strip() or f"exit code {done.returncode}")
    return done.stdout


def query_driver(run: Callable[[Sequence[str]], str] = _run_nvidia_smi) -> DriverReport:
    """Ask `nvidia-smi` for the GPUs and the driver's CUDA version; never raises."""
    try:
        gpus = parse_gpu_csv(run(["--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]))
        cuda = parse_cuda_version(run([]))
    except FileNotFoundError:
        return DriverReport((), None, "nvidia-smi was not found: no NVIDIA driver is installed, or it is not on PATH")
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return DriverReport((), None, f"nvidia-smi failed: {exc}")
    if not gpus:
        return DriverReport((), cuda, "nvidia-smi lists no GPU")
    return DriverReport(tuple(gpus), cuda)


def torch_wheel_tag(cuda_version: tuple[int, int] | None) -> str:
    """The newest PyTorch CUDA build the driver can run, or "cpu"."""
    if cuda_version is not None:
        for lowest, tag in CUDA_WHEEL_TABLE:
            if cuda_version >= lowest:
                return tag
    return CPU_TAG


def torch_index_url(tag: str) -> str:
    return TORCH_INDEX_BASE + tag


def torch_advice(report: DriverReport) -> str:
    """One line on the PyTorch build chosen for this driver and what to do when it is the CPU one."""
    tag = torch_wheel_tag(report.cuda_version)
    if tag != CPU_TAG:
        major, minor = report.cuda_version
        return f"PyTorch build: {tag} (the driver supports CUDA {major}.{minor})."
    if report.gpus and report.cuda_version is not None:
        lowest = ".".join(map(str, CUDA_WHEEL_TABLE[-1][0]))
        have = ".".join(map(str, report.cuda_version))
        return (
            f"PyTorch build: cpu. The NVIDIA driver only supports CUDA {have}; GPU builds need CUDA {lowest} "
            "or newer. Update the driver (nvidia.com/drivers, or your distribution's driver manager) and run "
            "the installer again."
        )
    if report.gpus:
        return "PyTorch build: cpu. The driver's CUDA version could not be read; update the NVIDIA driver."
    return (
        f"PyTorch build: cpu ({report.problem}). If this PC has an NVIDIA GPU, install its driver and run "
        "the installer again."
    )


def vram_advice(gpu: GpuInfo | None) -> str:
    if gpu is None:
        return CPU_ADVICE
    for lowest_mib, advice in VRAM_ADVICE:
        if gpu.memory_total_mib >= lowest_mib:
            return advice
    return SMALL_GPU_ADVICE


def check_disk(path: Path, needed_bytes: int) -> DiskReport:
    """Free space on the disk that holds `path` (or its nearest existing parent)."""
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return DiskReport(path=path, free_bytes=shutil.disk_usage(probe).free, needed_bytes=needed_bytes)


def disk_advice(disk: DiskReport) -> str:
    free, need = disk.free_bytes / GB, disk.needed_bytes / GB
    if disk.is_enough:
        return f"Disk: {free:.1f} GB free at {disk.path}; the real models need about {need:.1f} GB."
    return (
        f"Disk: only {free:.1f} GB free at {disk.path}, the real models need about {need:.1f} GB. Free some "
        "space, choose another models folder, or point Storyloom at model files you already have (no copy)."
    )


def format_report(driver: DriverReport, disk: DiskReport) -> str:
    lines = []
    for gpu in driver.gpus:
        lines.append(f"GPU: {gpu.name}, {gpu.vram_gb:.1f} GB VRAM, driver {gpu.driver_version}")
    if not driver.gpus:
        lines.append(f"GPU: none found ({driver.problem})")
    lines += [torch_advice(driver), vram_advice(driver.best_gpu), disk_advice(disk)]
    return "\n".join(lines)


def _default_models_dir() -> Path:
    data_dir = os.environ.get("STORYLOOM_DATA_DIR")
    return Path(data_dir) / "models" if data_dir else Path.home()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m storyloom.gpucheck",
        description="Check the NVIDIA GPU, driver and free disk before downloading models. Advice only.",
    )
    parser.add_argument("--torch-index", action="store_true", help="print 'TAG URL' of the PyTorch wheel index")
    parser.add_argument("--models-dir", type=Path, default=None, help="where the models will be stored")
    parser.add_argument(
        "--need-gb",
        type=float,
        default=sum(MODEL_DOWNLOAD_BYTES.values()) / GB,
        help="disk space the models need",
    )
    args = parser.parse_args(argv)
    if args.need_gb < 0:
        parser.error(f"--need-gb must be >= 0, got {args.need_gb}")
    driver = query_driver()
    if args.torch_index:
        tag = torch_wheel_tag(driver.cuda_version)
        print(tag, torch_index_url(tag))
        return 0
    disk = check_disk(args.models_dir or _default_models_dir(), int(args.need_gb * GB))
    print(format_report(driver, disk))
    return 0


if __name__ == "__main__":
    sys.exit(main())
