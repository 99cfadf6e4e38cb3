#!/usr/bin/env bash
# Storyloom from a source checkout, in a local .venv:
#   bash installer/dev.sh run [IDEA]   set up, then write a story + picture (demo models unless real ones are configured)
#   bash installer/dev.sh test   set up with the test extras, then run the whole test suite (CPU, offline)
# End users install with installer/install.sh or installer/install.bat instead (CUDA build of PyTorch, shortcuts).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${STORYLOOM_VENV:-.venv}
PYTHON=${PYTHON:-python3}
QT_DEBS="libegl1 libgl1 libglx0 libglvnd0 libfontconfig1 libfreetype6 libxkbcommon0 libx11-6 libxcb1 libglib2.0-0 libdbus-1-3 fonts-dejavu-core"

setup() {
    local extras=$1
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    # torch first and pinned: pip then keeps it when it installs the app (a CPU build where one is on disk).
    "$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    "$VENV/bin/python" -m pip install -q -e ".$extras"
}

qt_system_libraries() {
    # Qt's offscreen platform still links EGL/fontconfig/xkbcommon; install them on a bare Debian/Ubuntu box.
    if ! QT_QPA_PLATFORM=offscreen "$VENV/bin/python" -c "from PySide6.QtGui import QGuiApplication" 2>/dev/null; then
        if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
            # shellcheck disable=SC2086
            apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $QT_DEBS
        else
            echo "Qt needs system libraries: sudo apt-get install $QT_DEBS" >&2
        fi
    fi
}

case "${1:-}" in
    run)
        setup ""
        "$VENV/bin/storyloom" generate "${2:-A lighthouse keeper befriends the storm that keeps ships away}"
        ;;
    test)
        setup "[dev]"
        qt_system_libraries
        export QT_QPA_PLATFORM=offscreen HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
        "$VENV/bin/python" -m pytest -q tests "${@:2}"
        ;;
    *)
        echo "usage: bash installer/dev.sh run|test" >&2
        exit 2
        ;;
esac
