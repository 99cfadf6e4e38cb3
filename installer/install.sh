#!/usr/bin/env bash
# Storyloom installer for Linux: a private virtual environment, the PyTorch build that fits the NVIDIA
# driver, the app, and a menu entry with its icon. Run it again to repair or upgrade.
# --uninstall removes the environment and the menu entry; your stories and models stay unless --purge.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPT_DIR")"
DATA_HOME="${XDG_DATA_HOME:-$HOME/.local/share}"
CONFIG_HOME="${XDG_CONFIG_HOME:-$HOME/.config}"
# The app's own folders (storyloom/paths.py: platformdirs with the app name "Storyloom").
DATA_DIR="${STORYLOOM_DATA_DIR:-$DATA_HOME/Storyloom}"
CONFIG_DIR="${STORYLOOM_CONFIG_DIR:-$CONFIG_HOME/Storyloom}"
DESKTOP_FILE="$DATA_HOME/applications/storyloom.desktop"

PREFIX="${STORYLOOM_VENV:-$DATA_DIR/venv}"
SOURCE="$REPO_DIR"
PYTHON="${STORYLOOM_PYTHON:-python3}"
TORCH_SPEC="torch"
TORCH_INDEX="auto"
SHORTCUTS=1
DRY_RUN=0
ACTION="install"
PURGE=0

usage() {
    cat <<EOF
Usage: install.sh [options]

Installs Storyloom into a private virtual environment (default: $PREFIX).

  --prefix DIR         virtual environment folder (env STORYLOOM_VENV)
  --source PATH        what to install: this repository (default) or a storyloom wheel
  --python EXE         Python 3.10+ used to create the environment (env STORYLOOM_PYTHON; default python3)
  --torch-spec SPEC    PyTorch requirement (default: torch), e.g. torch==2.13.0
  --torch-index URL    PyTorch wheel index; 'auto' (default) picks it from the NVIDIA driver,
                       'default' uses pip's configured indexes
  --no-shortcuts       do not create the menu entry
  --dry-run            print the plan and the commands, change nothing
  --uninstall          remove the environment and the menu entry (stories and models are kept)
  --purge              with --uninstall: also delete stories, models and settings
                       ($DATA_DIR, $CONFIG_DIR)
  -h, --help           this text
EOF
}

die() {
    echo "error: $*" >&2
    exit 1
}

need_value() {
    [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --prefix) need_value "$@"; PREFIX="$2"; shift 2 ;;
        --source) need_value "$@"; SOURCE="$2"; shift 2 ;;
        --python) need_value "$@"; PYTHON="$2"; shift 2 ;;
        --torch-spec) need_value "$@"; TORCH_SPEC="$2"; shift 2 ;;
        --torch-index) need_value "$@"; TORCH_INDEX="$2"; shift 2 ;;
        --no-shortcuts) SHORTCUTS=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --uninstall) ACTION="uninstall"; shift ;;
        --purge) PURGE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
[[ $PURGE -eq 0 || $ACTION == "uninstall" ]] || die "--purge only goes with --uninstall"

[[ $PREFIX == /* ]] || PREFIX="$PWD/$PREFIX"  # the menu entry needs an absolute path
VENV_PY="$PREFIX/bin/python"
ICON_FILE="$PREFIX/storyloom.png"

# Print a command; run it unless this is a dry run.
run() {
    echo "+ $*"
    if [[ $DRY_RUN -eq 0 ]]; then
        "$@"
    fi
}

is_venv() {
    [[ -f "$1/pyvenv.cfg" ]]
}

remove_tree() {
    if [[ -e "$1" ]]; then
        run rm -rf -- "$1"
    fi
}

check_python() {
    command -v "$PYTHON" >/dev/null 2>&1 ||
        die "'$PYTHON' not found. Install Python 3.10 or newer (e.g. 'sudo apt install python3 python3-venv') or pass --python."
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        die "$("$PYTHON" --version 2>&1) is too old: Storyloom needs Python 3.10 or newer (pass --python)."
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null ||
        die "'$PYTHON' cannot create virtual environments: install the venv module (e.g. 'sudo apt install python3-venv')."
}

# Sets TORCH_INDEX_URL (empty: pip's own indexes) and prints the GPU/driver/disk report.
choose_torch_index() {
    local tag url
    "$PYTHON" -I "$REPO_DIR/storyloom/gpucheck.py" --models-dir "$DATA_DIR/models"
    case "$TORCH_INDEX" in
        auto)
            read -r tag url < <("$PYTHON" -I "$REPO_DIR/storyloom/gpucheck.py" --torch-index) || true
            [[ -n "${url:-}" ]] || die "the GPU check failed (see above); pass --torch-index URL to choose the build."
            echo "PyTorch wheel index: $tag ($url)"
            TORCH_INDEX_URL="$url"
            ;;
        default)
            echo "PyTorch wheel index: pip's configured indexes (--torch-index default)"
            TORCH_INDEX_URL=""
            ;;
        *)
            echo "PyTorch wheel index: $TORCH_INDEX (--torch-index)"
            TORCH_INDEX_URL="$TORCH_INDEX"
            ;;
    esac
}

create_venv() {
    if is_venv "$PREFIX" && "$VENV_PY" -c 'import sys' >/dev/null 2>&1; then
        echo "Reusing the environment at $PREFIX (repair/upgrade)."
        return
    fi
    if is_venv "$PREFIX"; then
        echo "The environment at $PREFIX is broken (was Python upgraded?); creating it again."
        remove_tree "$PREFIX"
    elif [[ -e "$PREFIX" && -n "$(ls -A "$PREFIX" 2>/dev/null)" ]]; then
        die "$PREFIX exists and is not a Python environment; choose an empty folder with --prefix."
    fi
    run "$PYTHON" -m venv "$PREFIX"
}

# The PyTorch build in the environment (cpu, cu124, ...), or nothing when there is none.
installed_torch_tag() {
    "$VENV_PY" -c 'import torch; v = torch.version.cuda; print("cu" + v.replace(".", "") if v else "cpu")' \
        2>/dev/null || true
}

install_packages() {
    local pip=("$VENV_PY" -m pip install --upgrade) installed wanted
    if [[ -n "$TORCH_INDEX_URL" ]]; then
        # pip counts a torch of another build (e.g. the CPU one, before a driver update) as installed: replace it.
        wanted="${TORCH_INDEX_URL%/}"
        wanted="${wanted##*/}"
        installed="$(installed_torch_tag)"
        if [[ -n "$installed" && "$installed" != "$wanted" ]]; then
            echo "Replacing the $installed build of PyTorch with the $wanted build."
            run "$VENV_PY" -m pip uninstall --yes torch
        fi
        run "${pip[@]}" --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
    else
        run "${pip[@]}" "$TORCH_SPEC"
    fi
    run "${pip[@]}" "$SOURCE"
}

write_desktop_entry() {
    echo "+ write $DESKTOP_FILE"
    [[ $DRY_RUN -eq 0 ]] || return 0
    mkdir -p "$(dirname "$DESKTOP_FILE")"
    cat >"$DESKTOP_FILE.tmp" <<EOF
[Desktop Entry]
Type=Application
Name=Storyloom
Comment=Stories and illustrations on your RTX PC
Exec="$VENV_PY" -m app
Icon=$ICON_FILE
Terminal=false
Categories=Graphics;Office;
StartupWMClass=storyloom
EOF
    mv -f "$DESKTOP_FILE.tmp" "$DESKTOP_FILE"
}

create_shortcuts() {
    run cp "$REPO_DIR/assets/icons/storyloom.png" "$ICON_FILE"
    write_desktop_entry
    if command -v update-desktop-database >/dev/null 2>&1; then
        run update-desktop-database "$(dirname "$DESKTOP_FILE")" || true
    fi
}

install() {
    check_python
    [[ -e "$SOURCE" ]] || die "--source '$SOURCE' does not exist"
    choose_torch_index
    create_venv
    install_packages
    if [[ $SHORTCUTS -eq 1 ]]; then
        create_shortcuts
    fi
    echo
    if [[ $DRY_RUN -eq 1 ]]; then
        echo "Dry run finished: nothing was changed."
        return
    fi
    echo "Storyloom is installed in $PREFIX."
    echo "Start it from the applications menu, or run: \"$VENV_PY\" -m app"
    echo "Try the demo models: \"$PREFIX/bin/storyloom\" demo"
}

uninstall() {
    if [[ -e "$PREFIX" ]] && ! is_venv "$PREFIX"; then
        die "$PREFIX is not a Python environment; nothing removed (check --prefix)."
    fi
    remove_tree "$PREFIX"
    if [[ -e "$DESKTOP_FILE" ]]; then
        run rm -f -- "$DESKTOP_FILE"
    fi
    if [[ $PURGE -eq 1 ]]; then
        remove_tree "$DATA_DIR"
        remove_tree "$CONFIG_DIR"
        echo "Storyloom, its stories, models and settings are removed."
    else
        echo "Storyloom is removed. Your stories, models and settings are kept in $DATA_DIR and $CONFIG_DIR"
        echo "(run with --uninstall --purge to delete them too)."
    fi
}

if [[ $DRY_RUN -eq 1 ]]; then
    echo "Dry run: nothing is changed."
fi
"$ACTION"
