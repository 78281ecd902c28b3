"""Real, small PNGs for the fakes to answer with."""

from __future__ import annotations

import io

from PIL import Image


def png(width: int, height: int, color: tuple[int, int, int] = (40, 120, 200)) -> bytes:
    """A solid-colour PNG of the given size (capped at 2048 per side)."""
    image = Image.new("RGB", (min(width, 2048), min(height, 2048)), color)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
