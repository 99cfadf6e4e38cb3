"""Forward `logging` records to the GUI thread as a Qt signal, for the log view."""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, Signal


class LogBridge(QObject):
    """A logging handler's Qt side: `record_logged(level_name, text)` is emitted for every record."""

    record_logged = Signal(str, str)

    def __init__(self, level: int = logging.INFO) -> None:
        super().__init__()
        self._handler = _SignalHandler(self)
        self._handler.setLevel(level)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))

    def install(self, logger: logging.Logger | None = None) -> None:
        target = logger or logging.getLogger()
        target.addHandler(self._handler)
        if target.level == logging.NOTSET or target.level > self._handler.level:
            target.setLevel(self._handler.level)

    def uninstall(self, logger: logging.Logger | None = None) -> None:
        (logger or logging.getLogger()).removeHandler(self._handler)


class _SignalHandler(logging.Handler):
    def __init__(self, bridge: LogBridge) -> None:
        super().__init__()
        self._bridge = bridge

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a bad format string in someone's log call must not break logging
            self.handleError(record)
            return
        self._bridge.record_logged.emit(record.levelname, text)
