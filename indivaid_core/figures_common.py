"""Drawing helpers shared by the evaluation and identification figures, and a safe saver."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from indivaid_core.safe_io import atomic_path


def framed_image(
    ax: Axes,
    path: str | Path | None,
    title: str,
    colour: str | None,
    border: float,
    fontsize: float = 8,
    missing_ok: bool = False,
) -> None:
    """Draw an image without ticks, framed in ``colour`` (no frame when None).

    One helper so that every grid marks right/wrong matches the same way. ``missing_ok``
    leaves the tile blank for a missing photo (identification results may point at files
    that are gone); otherwise a missing file raises FileNotFoundError before anything is drawn.
    """
    path = None if path is None else Path(path)
    found = path is not None and path.is_file()
    if not found and not missing_ok:
        raise FileNotFoundError(f"image not found: {path}")
    if found:
        with Image.open(path) as im:
            ax.imshow(np.asarray(im.convert("RGB")))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=fontsize)
    for spine in ax.spines.values():
        spine.set_visible(colour is not None)
        if colour is not None:
            spine.set_edgecolor(colour)
            spine.set_linewidth(border)


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> None:
    """A figure as PNG, written whole or not at all (a killed kernel leaves no half image)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
