"""The Windows installer cannot run here; check that it stays in step with the Linux one it mirrors."""

from __future__ import annotations

import re
from pathlib import Path

INSTALLER = Path(__file__).resolve().parent.parent / "installer"


def linux_options() -> set[str]:
    usage = (INSTALLER / "install.sh").read_text()
    return set(re.findall(r"^\s+--([a-z-]+)", usage, flags=re.MULTILINE)) - {"help"}


def windows_parameters() -> set[str]:
    script = (INSTALLER / "install.ps1").read_text()
    block = script[script.index("param(") : script.index("\n)\n")]
    return set(re.findall(r"\]\$([A-Za-z]+)", block))


def test_every_linux_option_has_a_windows_parameter():
    pascal = {"".join(part.capitalize() for part in option.split("-")) for option in linux_options()}
    assert pascal == windows_parameters()
    assert {"Prefix", "TorchSpec", "NoShortcuts", "DryRun", "Uninstall", "Purge"} <= pascal


def test_bat_runs_the_script_beside_it_without_the_execution_policy_prompt():
    bat = (INSTALLER / "install.bat").read_bytes().decode()
    assert 'powershell.exe -NoProfile -ExecutionPolicy Bypass -File "%~dp0install.ps1" %*' in bat
    assert "exit /b %RC%" in bat


def test_windows_shortcuts_start_the_gui_without_a_console():
    script = (INSTALLER / "install.ps1").read_text()
    assert "'Scripts\\pythonw.exe'" in script and "$shortcut.Arguments = '-m app'" in script
    assert "GetFolderPath('Programs')" in script and "GetFolderPath('Desktop')" in script


def test_windows_scripts_are_plain_ascii():
    for name in ("install.ps1", "install.bat"):
        (INSTALLER / name).read_bytes().decode("ascii")
