"""The window icon and the style sheet."""

from __future__ import annotations

import logging

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QLinearGradient, QPainter, QPainterPath, QPen, QPixmap, QTransform

from assets import ASSETS_DIR

log = logging.getLogger(__name__)

ICON_FILES = ("storyloom.png", "storyloom.ico")
STYLE_SHEET = ASSETS_DIR / "styles" / "storyloom.qss"


def app_icon() -> QIcon:
    """The installer's icon file when present, else a drawn one (an open book under a thread)."""
    for name in ICON_FILES:
        path = ASSETS_DIR / "icons" / name
        if path.is_file():
            icon = QIcon(str(path))
            if not icon.isNull():
                return icon
    icon = QIcon()
    for size in (16, 32, 48, 64, 128, 256):
        icon.addPixmap(draw_icon(size))
    return icon


def draw_icon(size: int) -> QPixmap:
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    s = size / 64.0
    p = QPainter(pixmap)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    gradient = QLinearGradient(0, 0, size, size)
    gradient.setColorAt(0.0, QColor("#6d5dfc"))
    gradient.setColorAt(1.0, QColor("#c2409a"))
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(gradient)
    p.drawRoundedRect(QRectF(2 * s, 2 * s, 60 * s, 60 * s), 14 * s, 14 * s)
    p.setBrush(QColor("#ffffff"))
    left = QPainterPath(QPointF(31 * s, 24 * s))
    left.cubicTo(24 * s, 20 * s, 17 * s, 20 * s, 12 * s, 22 * s)
    left.lineTo(12 * s, 48 * s)
    left.cubicTo(17 * s, 46 * s, 24 * s, 46 * s, 31 * s, 50 * s)
    left.closeSubpath()
    p.drawPath(left)
    p.drawPath(QTransform().translate(64 * s, 0).scale(-1, 1).map(left))  # the right page
    pen = QPen(QColor("#ffe08a"), max(1.0, 2.5 * s))
    pen.setCapStyle(Qt.PenCapStyle.RoundCap)
    p.setPen(pen)
    p.setBrush(Qt.BrushStyle.NoBrush)
    thread = QPainterPath(QPointF(10 * s, 14 * s))
    thread.cubicTo(22 * s, 6 * s, 42 * s, 22 * s, 54 * s, 12 * s)
    p.drawPath(thread)
    p.end()
    return pixmap


def style_sheet() -> str:
    try:
        return STYLE_SHEET.read_text(encoding="utf-8")
    except OSError as exc:
        log.warning("style sheet %s not readable (%s); using the platform style", STYLE_SHEET, exc)
        return ""
