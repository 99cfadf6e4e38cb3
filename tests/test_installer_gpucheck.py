"""The GPU/driver/disk check: nvidia-smi parsing, the CUDA -> PyTorch wheel table, VRAM and disk advice."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from storyloom import gpucheck
from storyloom.gpucheck import (
    DriverReport,
    GpuInfo,
    check_disk,
    parse_cuda_version,
    parse_gpu_csv,
    query_driver,
    torch_advice,
    torch_wheel_tag,
    vram_advice,
)

GPUCHECK_FILE = Path(gpucheck.__file__)
Usage = namedtuple("Usage", "total used free")
SMI_HEADER = """+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 560.94                 Driver Version: 560.94         CUDA Version: {cuda}     |
|-----------------------------------------+------------------------+----------------------+
"""


def write_fake_nvidia_smi(bin_dir: Path, csv: str, cuda: str, exit_code: int = 0) -> None:
    """An `nvidia-smi` stand-in: CSV for --query-gpu, the usual header otherwise."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        f"[ {exit_code} -ne 0 ] && {{ echo 'NVIDIA-SMI has failed: driver not loaded'; exit {exit_code}; }}\n"
        f'case "$1" in --query-gpu*) printf "%s" "{csv}";; *) printf "%s" "{SMI_HEADER.format(cuda=cuda)}";; esac\n'
    )
    script.chmod(0o755)


def test_parse_gpu_csv_reads_every_gpu_and_skips_junk():
    text = "NVIDIA GeForce RTX 4090, 24564 MiB, 560.94\n\nNVIDIA RTX A2000 Laptop GPU, 4096 MiB, 535.1\nbroken line\n"
    assert parse_gpu_csv(text) == [
        GpuInfo("NVIDIA GeForce RTX 4090", 24564, "560.94"),
        GpuInfo("NVIDIA RTX A2000 Laptop GPU", 4096, "535.1"),
    ]
    assert parse_gpu_csv("Tesla, [N/A], 1.0") == []


def test_parse_cuda_version_from_the_header():
    assert parse_cuda_version(SMI_HEADER.format(cuda="12.6")) == (12, 6)
    assert parse_cuda_version("no header here") is None


@pytest.mark.parametrize(
    ("cuda", "tag"),
    [
        ((13, 0), "cu128"),
        ((12, 9), "cu128"),
        ((12, 8), "cu128"),
        ((12, 7), "cu126"),
        ((12, 6), "cu126"),
        ((12, 5), "cu124"),
        ((12, 4), "cu124"),
        ((12, 3), "cu121"),
        ((12, 1), "cu121"),
        ((12, 0), "cu118"),
        ((11, 8), "cu118"),
        ((11, 7), "cpu"),
        (None, "cpu"),
    ],
)
def test_wheel_tag_is_the_newest_build_the_driver_runs(cuda, tag):
    assert torch_wheel_tag(cuda) == tag


def test_torch_advice_says_what_to_do():
    gpu = (GpuInfo("RTX 3060", 12288, "470.1"),)
    assert "cu124" in torch_advice(DriverReport(gpu, (12, 4)))
    old = torch_advice(DriverReport(gpu, (11, 4)))
    assert "only supports CUDA 11.4" in old and "11.8" in old and "Update the driver" in old
    assert "install its driver" in torch_advice(DriverReport((), None, "nvidia-smi was not found"))


@pytest.mark.parametrize(
    ("mib", "label"),
    [
        (24564, "24 GB or more"),
        (16376, "16 GB class"),
        (12282, "12 GB class"),
        (8188, "8 GB class"),
        (6144, "6 GB class"),
        (4096, "Under 6 GB"),
    ],
)
def test_vram_advice_per_card_size(mib, label):
    assert vram_advice(GpuInfo("card", mib, "560")).startswith(label)


def test_no_gpu_means_cpu_advice():
    assert "CPU only" in vram_advice(None)


def raising(exc: Exception):
    def run(args):
        raise exc

    return run


def test_query_driver_never_raises():
    assert query_driver(raising(FileNotFoundError())).problem.startswith("nvidia-smi was not found")
    failed = query_driver(raising(RuntimeError("driver not loaded")))
    assert failed.gpus == () and "driver not loaded" in failed.problem

    def smi(args):
        return "RTX 4070, 12282 MiB, 551.86\n" if args else SMI_HEADER.format(cuda="12.4")

    report = query_driver(smi)
    assert report.best_gpu == GpuInfo("RTX 4070", 12282, "551.86") and report.cuda_version == (12, 4)


def test_check_disk_walks_up_to_an_existing_folder(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(gpucheck.shutil, "disk_usage", lambda p: seen.append(p) or Usage(100, 90, 10 * gpucheck.GB))
    disk = check_disk(tmp_path / "not" / "yet" / "there", 23 * gpucheck.GB)
    assert seen == [tmp_path] and not disk.is_enough
    assert "only 10.0 GB free" in gpucheck.disk_advice(disk) and "23.0 GB" in gpucheck.disk_advice(disk)
    assert check_disk(tmp_path, 5 * gpucheck.GB).is_enough


def run_gpucheck(args: list[str], bin_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-I", str(GPUCHECK_FILE), *args], capture_output=True, text=True, env=env, check=False
    )


def test_runs_as_a_plain_script_with_a_fake_driver(tmp_path):
    write_fake_nvidia_smi(tmp_path / "bin", "NVIDIA GeForce RTX 4060, 8188 MiB, 566.03\n", cuda="12.7")
    index = run_gpucheck(["--torch-index"], tmp_path / "bin")
    assert index.returncode == 0 and index.stdout.split() == ["cu126", "https://download.pytorch.org/whl/cu126"]

    report = run_gpucheck(["--models-dir", str(tmp_path / "models"), "--need-gb", "1"], tmp_path / "bin")
    assert report.returncode == 0
    assert "GPU: NVIDIA GeForce RTX 4060, 8.0 GB VRAM, driver 566.03" in report.stdout
    assert "8 GB class" in report.stdout and "cu126" in report.stdout and "Disk:" in report.stdout


def test_a_broken_driver_is_advice_not_a_failure(tmp_path):
    write_fake_nvidia_smi(tmp_path / "bin", "", cuda="12.4", exit_code=9)
    result = run_gpucheck([], tmp_path / "bin")
    assert result.returncode == 0
    assert "nvidia-smi failed" in result.stdout and "CPU only" in result.stdout
    assert run_gpucheck(["--torch-index"], tmp_path / "bin").stdout.split()[0] == "cpu"


def test_real_nvidia_smi_output_from_a_driver_580_machine():
    header = "| NVIDIA-SMI 580.159.04             Driver Version: 580.159.04     CUDA Version: 13.0     |\n"
    csv = "NVIDIA H100 80GB HBM3, 81559 MiB, 580.159.04\n"
    report = query_driver(lambda args: csv if args else header)
    assert report.gpus == (GpuInfo("NVIDIA H100 80GB HBM3", 81559, "580.159.04"),)
    assert torch_wheel_tag(report.cuda_version) == "cu128"
    assert vram_advice(report.best_gpu).startswith("24 GB or more")
