"""installer/install.sh: shellcheck, the dry-run plan per driver, flags, uninstall; one slow real install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_installer_gpucheck import write_fake_nvidia_smi

REPO = Path(__file__).resolve().parent.parent
INSTALL_SH = REPO / "installer" / "install.sh"
RTX_4070 = "NVIDIA GeForce RTX 4070, 12282 MiB, 551.86\n"


def run_installer(args: list[str], home: Path, bin_dir: Path | None = None) -> subprocess.CompletedProcess:
    """Run install.sh as a user whose home is `home` (all default folders live under it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORYLOOM_", "XDG_"))}
    env["HOME"] = str(home)
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        ["bash", str(INSTALL_SH), *args], capture_output=True, text=True, env=env, cwd=home, check=False
    )


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "home"
    path.mkdir()
    return path


def test_shellcheck_passes():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(INSTALL_SH)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("cuda", "tag"), [("12.4", "cu124"), ("12.8", "cu128"), ("12.2", "cu121")])
def test_dry_run_installs_the_torch_build_the_driver_supports(home, tmp_path, cuda, tag):
    write_fake_nvidia_smi(tmp_path / "bin", RTX_4070, cuda=cuda)
    result = run_installer(["--dry-run"], home, tmp_path / "bin")

    assert result.returncode == 0, result.stderr
    out = result.stdout
    venv = home / ".local/share/Storyloom/venv"
    url = f"https://download.pytorch.org/whl/{tag}"
    assert "GPU: NVIDIA GeForce RTX 4070, 12.0 GB VRAM" in out and "12 GB class" in out
    assert f"PyTorch wheel index: {tag} ({url})" in out
    assert f"+ {venv}/bin/python -m pip install --upgrade --index-url {url} torch\n" in out
    assert f"+ {venv}/bin/python -m pip install --upgrade {REPO}\n" in out
    assert f"+ write {home}/.local/share/applications/storyloom.desktop" in out
    assert "Dry run finished: nothing was changed." in out
    assert list(home.iterdir()) == []


def test_dry_run_with_an_old_driver_falls_back_to_cpu_with_advice(home, tmp_path):
    write_fake_nvidia_smi(tmp_path / "bin", RTX_4070, cuda="11.4")
    out = run_installer(["--dry-run"], home, tmp_path / "bin").stdout
    assert "PyTorch wheel index: cpu (https://download.pytorch.org/whl/cpu)" in out
    assert "only supports CUDA 11.4" in out and "Update the driver" in out


def test_dry_run_without_a_working_driver_uses_the_cpu_build(home, tmp_path):
    write_fake_nvidia_smi(tmp_path / "bin", "", cuda="12.4", exit_code=9)
    out = run_installer(["--dry-run"], home, tmp_path / "bin").stdout
    assert "GPU: none found (nvidia-smi failed" in out and "CPU only" in out
    assert "--index-url https://download.pytorch.org/whl/cpu torch" in out


def test_dry_run_follows_the_test_flags(home, tmp_path):
    write_fake_nvidia_smi(tmp_path / "bin", RTX_4070, cuda="12.4")
    wheel = tmp_path / "storyloom-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    args = ["--dry-run", "--prefix", str(tmp_path / "env"), "--torch-spec", "torch==2.13.0"]
    args += ["--torch-index", "default", "--no-shortcuts", "--source", str(wheel)]
    out = run_installer(args, home, tmp_path / "bin").stdout

    assert f"+ {tmp_path}/env/bin/python -m pip install --upgrade torch==2.13.0\n" in out
    assert f"+ {tmp_path}/env/bin/python -m pip install --upgrade {wheel}\n" in out
    assert "--index-url" not in out and "storyloom.desktop" not in out


@pytest.mark.parametrize(("installed", "replaced"), [("cpu", True), ("cu124", False)])
def test_rerun_replaces_a_torch_build_that_does_not_fit_the_driver(home, tmp_path, installed, replaced):
    write_fake_nvidia_smi(tmp_path / "bin", RTX_4070, cuda="12.4")
    venv = tmp_path / "env"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "bin/python").write_text(f"#!/bin/sh\necho {installed}\n")  # answers the build probe
    (venv / "bin/python").chmod(0o755)
    out = run_installer(["--dry-run", "--prefix", str(venv), "--no-shortcuts"], home, tmp_path / "bin").stdout

    assert "Reusing the environment" in out
    assert (f"+ {venv}/bin/python -m pip uninstall --yes torch" in out) == replaced
    assert ("Replacing the cpu build of PyTorch with the cu124 build." in out) == replaced


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frobnicate"], "unknown option '--frobnicate'"),
        (["--purge"], "--purge only goes with --uninstall"),
        (["--prefix"], "--prefix needs a value"),
        (["--source", "/no/such/path", "--dry-run"], "--source '/no/such/path' does not exist"),
    ],
)
def test_bad_arguments_are_named(home, args, message):
    result = run_installer(args, home)
    assert result.returncode == 1 and message in result.stderr


def make_installed_layout(home: Path) -> dict[str, Path]:
    """What an install leaves behind, plus user data, without the slow pip installs."""
    share = home / ".local/share"
    paths = {
        "venv": share / "Storyloom/venv",
        "desktop": share / "applications/storyloom.desktop",
        "story": share / "Storyloom/stories/0001/story.json",
        "settings": home / ".config/Storyloom/settings.toml",
    }
    (paths["venv"] / "bin").mkdir(parents=True)
    (paths["venv"] / "pyvenv.cfg").write_text("home = /usr/bin\n")
    for key in ("desktop", "story", "settings"):
        paths[key].parent.mkdir(parents=True, exist_ok=True)
        paths[key].write_text(key)
    return paths


def test_uninstall_keeps_stories_and_settings_unless_purged(home):
    paths = make_installed_layout(home)
    result = run_installer(["--uninstall"], home)
    assert result.returncode == 0, result.stderr
    assert not paths["venv"].exists() and not paths["desktop"].exists()
    assert paths["story"].read_text() == "story" and paths["settings"].read_text() == "settings"
    assert "--uninstall --purge" in result.stdout

    result = run_installer(["--uninstall", "--purge"], home)
    assert result.returncode == 0, result.stderr
    assert not (home / ".local/share/Storyloom").exists() and not (home / ".config/Storyloom").exists()


def test_dry_run_uninstall_changes_nothing(home):
    paths = make_installed_layout(home)
    out = run_installer(["--uninstall", "--purge", "--dry-run"], home).stdout
    assert f"+ rm -rf -- {paths['venv']}" in out
    assert all(p.exists() for p in paths.values())


def test_folders_that_are_not_environments_are_never_touched(home, tmp_path):
    precious = tmp_path / "documents"
    precious.mkdir()
    (precious / "novel.txt").write_text("chapter one")
    for action in (["--uninstall"], ["--torch-index", "default", "--no-shortcuts"]):
        result = run_installer([*action, "--prefix", str(precious)], home)
        assert result.returncode == 1 and "is not a Python environment" in result.stderr
    assert (precious / "novel.txt").read_text() == "chapter one"


@pytest.mark.skipif(
    os.environ.get("STORYLOOM_TEST_INSTALLER") != "1",
    reason="slow (creates a venv and pip-installs the app twice); set STORYLOOM_TEST_INSTALLER=1 to run",
)
def test_real_install_twice_then_uninstall_keeps_data(home, tmp_path):
    venv = tmp_path / "venv"
    args = ["--prefix", str(venv), "--python", sys.executable, "--torch-spec", "torch==2.13.0"]
    args += ["--torch-index", "default"]
    check = [
        str(venv / "bin/python"),
        "-c",
        "import storyloom, torch, app; print(storyloom.__file__, torch.__version__)",
    ]

    first = run_installer(args, home)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    imported = subprocess.run(check, capture_output=True, text=True, cwd=tmp_path, check=True).stdout.split()
    assert imported[0].startswith(str(venv)) and imported[1].startswith("2.13.0")
    desktop = (home / ".local/share/applications/storyloom.desktop").read_text()
    assert f'Exec="{venv}/bin/python" -m app' in desktop and (venv / "storyloom.png").is_file()

    story = home / ".local/share/Storyloom/stories/0001/story.json"
    story.parent.mkdir(parents=True)
    story.write_text("{}")
    second = run_installer(args, home)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "Reusing the environment" in second.stdout
    subprocess.run(check, capture_output=True, text=True, cwd=tmp_path, check=True)

    removed = run_installer(["--uninstall", "--prefix", str(venv)], home)
    assert removed.returncode == 0, removed.stderr
    assert not venv.exists() and not (home / ".local/share/applications/storyloom.desktop").exists()
    assert story.read_text() == "{}"
