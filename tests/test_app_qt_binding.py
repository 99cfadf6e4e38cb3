"""The Qt binding must not leak references to None/True: PySide6 6.12.0 on CPython 3.11 dropped one per call,
and a long session aborted with "none_dealloc". pyproject.toml excludes that release; this guards the next ones."""

from __future__ import annotations

import sys

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QLabel

CALLS = 5000


class _Emitter(QObject):
    changed = Signal(int)


def test_calls_returning_none_keep_their_reference(qtbot):
    label = QLabel()
    qtbot.addWidget(label)
    emitter = _Emitter()
    before_none, before_true = sys.getrefcount(None), sys.getrefcount(True)
    for i in range(CALLS):
        label.setText(str(i))
        emitter.changed.emit(i)
        label.isVisibleTo(label)
    # A leaking binding loses at least one reference per call: thousands, far beyond ordinary noise.
    assert sys.getrefcount(None) > before_none - CALLS // 10
    assert sys.getrefcount(True) > before_true - CALLS // 10
