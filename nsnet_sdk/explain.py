"""Per-patch explanations: how much each of the mosaic's selected patches moves the logit, mapped
back to where that patch sits in the original image; and the ``nsnet explain`` command.

Method (occlusion): the mosaic is scored once as is and once per slot with that slot replaced by
the occlusion value, all ``1 + slots`` variants in one batch (one batched forward pass).
A slot's contribution is ``logit(mosaic) − logit(mosaic with that slot occluded)``: positive =
the patch pushes towards "AI-generated", negative = towards "real".

The occlusion value is 0 in the normalised input, i.e. every pixel of the slot set to the
normalisation mean (CLIP's dataset mean colour): the one constant the network saw as "average"
during training, so an occluded slot carries no texture and no colour cast.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ImageDecodeError, InferenceError, NSNetError, UnsupportedInputError
from .pipeline.inputs import ACCEPTED_INPUTS, bgr_to_rgb, is_image, source_name
from .prediction import sigmoid
from .pipeline import load_image, mosaic_slots, normalize, patch_entropies, patch_mosaic

if TYPE_CHECKING:
    from .detector import Detector

OCCLUSION = "normalised mean (0 after normalisation = the mean colour)"


@dataclass(frozen=True)
class Explanation:
    """Per-patch contributions to one image's logit.

    Attributes:
        source: the input's name (as in `Prediction.source`).
        logit, prob_fake: the unoccluded score (equal to `Detector.predict`'s).
        size: (width, height) of the decoded original image.
        patches: raster index (row-major over the patch grid) of the patch in each mosaic slot.
        boxes: (x0, y0, x1, y1) in original-image pixels of each slot's patch (x1, y1 exclusive;
            clipped to the image where a tiny image was padded).
        contributions: per slot, ``logit − logit with that slot occluded``.
        occlusion: the value an occluded slot is filled with (see the module docstring).
    """

    source: str
    logit: float
    prob_fake: float
    size: tuple[int, int]
    patches: tuple[int, ...]
    boxes: tuple[tuple[int, int, int, int], ...]
    contributions: tuple[float, ...]
    occlusion: str = OCCLUSION

    def to_dict(self) -> dict:
        """JSON-serialisable dict of every field."""
        d = asdict(self)
        d["size"] = list(self.size)
        d["boxes"] = [list(b) for b in self.boxes]
        return d


def patch_boxes(patches: np.ndarray, grid_cols: int, patch: int, size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Original-image boxes (x0, y0, x1, y1) of raster patch indices on a ``grid_cols``-wide grid."""
    w, h = size
    out = []
    for k in np.asarray(patches).tolist():
        r, c = divmod(int(k), grid_cols)
        out.append((c * patch, r * patch, min(w, (c + 1) * patch), min(h, (r + 1) * patch)))
    return out


def occlusion_batch(x: np.ndarray, grid: int, patch: int) -> np.ndarray:
    """(1 + grid², 3, S, S): ``x`` itself, then ``x`` with slot i (row i // grid, column
    i % grid of the mosaic) set to 0 for each i."""
    n = grid * grid
    batch = np.repeat(x[None], n + 1, axis=0)
    for i in range(n):
        r, c = divmod(i, grid)
        batch[1 + i, :, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = 0.0
    return batch


def explain_image(detector: "Detector", img: Any, name: str | None = None) -> Explanation:
    """`Detector.explain`: occlusion contributions of ``img`` (anything `Detector.predict` takes
    as one input). Raises the input's typed error (`ImageDecodeError`, ...) or `InferenceError`."""
    name = name or source_name(img, 0)
    if detector._closed:  # the backend's sessions and buffers are gone
        raise InferenceError(f"{detector.model_path}: the Detector is closed", source=str(detector.model_path))
    if not is_image(img):
        raise UnsupportedInputError(f"{name}: cannot explain a {type(img).__name__}: expected one of "
                                    f"{ACCEPTED_INPUTS}", source=name)
    try:
        src = bgr_to_rgb(img) if detector.channels == "bgr" else img
        rgb = load_image(src, max_pixels=detector.max_pixels, name=name)
    except NSNetError:
        raise
    except Exception as e:  # as Detector.predict: anything untyped about an input is a decode error
        raise ImageDecodeError(f"{name}: {type(e).__name__}: {e}", source=name) from e
    return explain_rgb(detector, rgb, name)


def explain_rgb(detector: "Detector", rgb: np.ndarray, name: str) -> Explanation:
    """`explain_image` of an already decoded RGB uint8 image."""
    cfg = detector.config
    h, w = rgb.shape[:2]
    ent = patch_entropies(rgb, cfg)
    slots = mosaic_slots(ent, cfg.slots)
    x = normalize(patch_mosaic(rgb, cfg), cfg)
    logits = np.asarray(detector.backend.run(occlusion_batch(x, cfg.grid, cfg.patch)), np.float64)
    if not np.all(np.isfinite(logits)):
        raise InferenceError(f"{name}: the model returned a non-finite logit", source=name)
    base = float(logits[0])
    return Explanation(
        source=name, logit=base, prob_fake=float(sigmoid(base)), size=(w, h),
        patches=tuple(int(k) for k in slots),
        boxes=tuple(patch_boxes(slots, ent.shape[1], cfg.patch, (w, h))),
        contributions=tuple(float(base - v) for v in logits[1:]))


# -- rendering ------------------------------------------------------------------------------------

def render_png(expl: Explanation, rgb: np.ndarray, path: str | Path, *, threshold: float | None = None,
               max_side: int = 1024) -> Path:
    """The original with every selected patch outlined, coloured by its contribution (diverging
    colour map centred on 0), a colour bar and the score in the title. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    c = np.asarray(expl.contributions)
    lim = max(float(np.abs(c).max()), 1e-6)
    norm = TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)
    cmap = plt.get_cmap("RdBu_r")
    fig, ax = plt.subplots(figsize=(max(4.0, 8 * w / max(h, w)) + 1.5, max(3.0, 8 * h / max(h, w))), dpi=100)
    # The photo is faded so the patch colours read on any picture; unselected areas stay faded.
    ax.imshow(rgb, extent=(0, w, h, 0), alpha=0.55, interpolation="antialiased" if scale < 1 else "nearest")
    for (x0, y0, x1, y1), v in zip(expl.boxes, c):
        colour = cmap(norm(v))
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, facecolor=(*colour[:3], 0.55),
                               edgecolor=colour, linewidth=2))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, fraction=0.046, pad=0.02, label="logit change (+ = towards AI-generated)")
    verdict = "" if threshold is None else ("  →  fake" if expl.prob_fake >= threshold else "  →  real")
    ax.set_title(f"{Path(expl.source).name}   prob_fake {expl.prob_fake:.3f} (logit {expl.logit:+.2f}){verdict}",
                 fontsize=10)
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
