"""Draw the Storyloom icon (an open book under a woven thread) as assets/icons/storyloom.png and .ico.

Run once after changing the drawing: `.venv/bin/python installer/make_icon.py`; the results are committed.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 256
ICON_DIR = Path(__file__).resolve().parent.parent / "assets" / "icons"
ICO_SIZES = [(16, 16), (24, 24), (32, 32), (48, 48), (64, 64), (128, 128), (256, 256)]

TOP = (58, 42, 122)
BOTTOM = (22, 96, 140)
PAGE = (250, 245, 232)
INK = (58, 42, 122)
THREAD = (255, 190, 70)


def draw_icon() -> Image.Image:
    gradient = Image.new("RGBA", (SIZE, SIZE))
    pixels = ImageDraw.Draw(gradient)
    for y in range(SIZE):
        t = y / (SIZE - 1)
        pixels.line([(0, y), (SIZE, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(TOP, BOTTOM, strict=True)))
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rounded_rectangle([8, 8, SIZE - 9, SIZE - 9], radius=48, fill=255)
    icon = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    icon.paste(gradient, (0, 0), mask)

    draw = ImageDraw.Draw(icon)
    # Open book: two pages meeting at the spine.
    draw.polygon([(128, 112), (44, 96), (44, 196), (128, 212)], fill=PAGE)
    draw.polygon([(128, 112), (212, 96), (212, 196), (128, 212)], fill=PAGE)
    draw.line([(128, 112), (128, 212)], fill=INK, width=4)
    for i in range(4):
        y = 122 + 20 * i
        draw.line([(60, y), (112, y + 10)], fill=INK, width=4)
        draw.line([(144, y + 10), (196, y)], fill=INK, width=4)
    # The thread woven above the book, ending in a star.
    draw.arc([52, 36, 140, 120], start=200, end=340, fill=THREAD, width=8)
    draw.arc([116, 44, 204, 128], start=200, end=340, fill=THREAD, width=8)
    cx, cy = 196, 62
    star = [(cx, cy - 18), (cx + 5, cy - 5), (cx + 18, cy), (cx + 5, cy + 5)]
    star += [(cx, cy + 18), (cx - 5, cy + 5), (cx - 18, cy), (cx - 5, cy - 5)]
    draw.polygon(star, fill=THREAD)
    return icon


def main() -> None:
    ICON_DIR.mkdir(parents=True, exist_ok=True)
    icon = draw_icon()
    icon.save(ICON_DIR / "storyloom.png")
    icon.save(ICON_DIR / "storyloom.ico", sizes=ICO_SIZES)
    print(f"wrote {ICON_DIR / 'storyloom.png'} and {ICON_DIR / 'storyloom.ico'}")


if __name__ == "__main__":
    main()
