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

from .errors import as_input_error, nonfinite_logit_error
from .pipeline import mosaic_slots, patch_entropies, preprocess
from .pipeline.decode import decode_image
from .pipeline.inputs import bgr_to_rgb, require_image, size_warnings, source_name
from .prediction import sigmoid

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
        warnings: what `Prediction.warnings` says about the same input (decoder notes, size).
    """

    source: str
    logit: float
    prob_fake: float
    size: tuple[int, int]
    patches: tuple[int, ...]
    boxes: tuple[tuple[int, int, int, int], ...]
    contributions: tuple[float, ...]
    occlusion: str = OCCLUSION
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """JSON-serialisable dict of every field."""
        d = asdict(self)
        d["size"] = list(self.size)
        d["boxes"] = [list(b) for b in self.boxes]
        d["warnings"] = list(self.warnings)
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


def load_for_explain(detector: "Detector", img: Any, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """``img`` decoded to RGB by the pipeline with the Detector's guards and channel order, and the
    warnings `Detector.predict` would give it. Raises the input's typed error (`as_input_error`)."""
    try:
        require_image(img, name)
        src = bgr_to_rgb(img) if detector.channels == "bgr" else img
        rgb, _, notes = decode_image(src, detector.max_pixels, name=name)
    except Exception as e:  # typed exactly as the Detector's executors type a bad input
        err = as_input_error(e, name)
        if err is e:
            raise
        raise err from e
    return rgb, tuple(notes) + size_warnings(rgb, detector.config.patch)


def explain_image(detector: "Detector", img: Any, name: str | None = None) -> Explanation:
    """`Detector.explain`: occlusion contributions of ``img`` (anything `Detector.predict` takes
    as one input). Raises the input's typed error (`ImageDecodeError`, ...) or `InferenceError`."""
    name = name or source_name(img, 0)
    rgb, notes = load_for_explain(detector, img, name)
    return explain_rgb(detector, rgb, name, notes)


def explain_rgb(detector: "Detector", rgb: np.ndarray, name: str, warnings: tuple[str, ...] = ()) -> Explanation:
    """`explain_image` of an already decoded RGB uint8 image."""
    cfg = detector.config
    h, w = rgb.shape[:2]
    ent = patch_entropies(rgb, cfg)
    slots = mosaic_slots(ent, cfg.slots)
    x = preprocess(rgb, cfg, slots=slots)  # the row predict makes, from the selection above
    logits = np.asarray(detector._run(occlusion_batch(x, cfg.grid, cfg.patch)), np.float64)
    if not np.all(np.isfinite(logits)):
        raise nonfinite_logit_error(name)
    base = float(logits[0])
    return Explanation(
        source=name, logit=base, prob_fake=float(sigmoid(base)), size=(w, h),
        patches=tuple(int(k) for k in slots),
        boxes=tuple(patch_boxes(slots, ent.shape[1], cfg.patch, (w, h))),
        contributions=tuple(float(base - v) for v in logits[1:]), warnings=tuple(warnings))


# -- rendering ------------------------------------------------------------------------------------

def render_png(expl: Explanation, rgb: np.ndarray, path: str | Path, *, threshold: float | None = None,
               max_side: int = 1024) -> Path:
    """The original with every selected patch outlined, coloured by its contribution (diverging
    colour map centred on 0), a colour bar and the score in the title. Needs matplotlib.

    Memory is bounded whatever the image's size: the photo is shrunk to ``max_side`` pixels on its
    longer side before matplotlib sees it (matplotlib resamples an image through float copies of
    the whole array: a 100-megapixel photo drawn as is costs gigabytes); boxes keep the original's
    coordinates. The title's file name is escaped as result files escape it (`escape_text`): a name
    that is not valid UTF-8 shows its bytes as ``\\xNN``.
    """
    import cv2
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    from .results import escape_text

    h, w = rgb.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    shown = rgb if scale == 1.0 else cv2.resize(
        rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    c = np.asarray(expl.contributions)
    lim = max(float(np.abs(c).max()), 1e-6)
    norm = TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)
    cmap = plt.get_cmap("RdBu_r")
    fig, ax = plt.subplots(figsize=(max(4.0, 8 * w / max(h, w)) + 1.5, max(3.0, 8 * h / max(h, w))), dpi=100)
    try:
        # The photo is faded so the patch colours read on any picture; unselected areas stay faded.
        ax.imshow(shown, extent=(0, w, h, 0), alpha=0.55, interpolation="antialiased" if scale < 1 else "nearest")
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
        ax.set_title(f"{escape_text(Path(expl.source).name)}   prob_fake {expl.prob_fake:.3f} "
                     f"(logit {expl.logit:+.2f}){verdict}", fontsize=10)
        path = Path(path)
        fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)  # a failed drawing must not leave its figure (and image) behind in a long run
    return path
