"""The semantic corpus (prompt bank + user captions) and its CLIP text features.

Prompt bank: ImageNet-1k class names (imported from open_clip, which ships them) and the 80 COCO
object names (``training/prompts/coco.txt``), each in the templates of
``training/prompts/templates.txt``. ``bank="default"`` is ImageNet + COCO, ``"coco"`` only COCO
(80 names: cheap, for tests and benchmarks), ``"none"`` nothing (captions only).

Cost: encoding is ≈ 2 · text-tower params · tokens FLOPs per prompt. The text tower is run on a
context cut just past the longest prompt's end token (exact: under the causal mask the tokens after
EOT cannot change the EOT feature), ~10–20 tokens instead of 77.
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from training.cli_common import BANKS

log = logging.getLogger(__name__)

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
CAPTION_COLUMNS = ("caption", "text", "prompt")


def _read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def templates() -> list[str]:
    """Prompt templates, most generic first (``--templates N`` keeps the first N)."""
    return _read_lines(PROMPT_DIR / "templates.txt")


def class_names(bank: str = "default") -> list[str]:
    """Object names of a prompt bank."""
    if bank not in BANKS:
        raise ValueError(f"unknown prompt bank {bank!r}; choose one of {', '.join(BANKS)}")
    if bank == "none":
        return []
    coco = _read_lines(PROMPT_DIR / "coco.txt")
    if bank == "coco":
        return coco
    from open_clip import IMAGENET_CLASSNAMES

    seen: dict[str, None] = dict.fromkeys(list(IMAGENET_CLASSNAMES) + coco)
    return list(seen)


def prompt_bank(bank: str = "default", n_templates: int | None = None) -> list[str]:
    """Every (name, template) prompt of a bank, in a fixed order."""
    tpl = templates()
    if n_templates is not None:
        if n_templates < 1:
            raise ValueError(f"--templates must be >= 1, got {n_templates}")
        tpl = tpl[:n_templates]
    return [t.format(name) for name in class_names(bank) for t in tpl]


def read_captions(path: str | Path) -> list[str]:
    """Captions from a .txt (one per line), .csv (a caption/text/prompt column) or .json file
    (a list of strings, a list of objects with such a key, or an object mapping ids to captions)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"captions file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        with p.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = {c.lower().strip(): c for c in (reader.fieldnames or [])}
            col = next((cols[c] for c in CAPTION_COLUMNS if c in cols), None)
            if col is None:
                raise ValueError(f"{p}: no caption column (one of {', '.join(CAPTION_COLUMNS)}) in header {reader.fieldnames}")
            out = [(row.get(col) or "").strip() for row in reader]
    elif suffix == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = list(data.values())
        if not isinstance(data, list):
            raise ValueError(f"{p}: expected a JSON list or object of captions")
        out = []
        for item in data:
            if isinstance(item, str):
                out.append(item.strip())
            elif isinstance(item, dict):
                key = next((k for k in CAPTION_COLUMNS if k in item), None)
                if key is None:
                    raise ValueError(f"{p}: entry without a caption key ({', '.join(CAPTION_COLUMNS)}): {item!r}")
                out.append(str(item[key]).strip())
            else:
                raise ValueError(f"{p}: unsupported caption entry {item!r}")
    else:
        out = _read_lines(p)
    return [c for c in out if c]


@torch.no_grad()
def encode_texts(
    clip_model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """CLIP text features (n×d, float32, unnormalised) of ``texts``, batched with a progress bar."""
    if not texts:
        return torch.zeros(0, int(clip_model.visual.output_dim))
    clip_model.eval()
    tokens = tokenizer(list(texts))
    # Batches of similar length: each batch is cut at its own longest prompt, so sorting by length
    # leaves little padding. The result is put back in input order.
    order = torch.argsort(tokens.argmax(dim=-1), stable=True)
    out = torch.empty(len(texts), 0)
    for i in tqdm(range(0, len(texts), batch_size), desc="text features", unit="batch",
                  disable=not progress, leave=False):
        idx = order[i:i + batch_size]
        feats = _encode_short(clip_model, tokens[idx].to(device)).float().cpu()
        if out.shape[1] == 0:
            out = torch.empty(len(texts), feats.shape[1])
        out[idx] = feats
    return out


def _encode_short(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` on a context cut just past the last EOT token of the batch.

    Exact for open_clip's CLIP text tower (causal mask, argmax/EOT pooling); any other tower falls
    back to the full ``encode_text``.
    """
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask")
    if getattr(model, "text_pool_type", None) != "argmax" or not all(hasattr(model, a) for a in needed) \
            or model.attn_mask is None:
        return model.encode_text(tokens)
    # EOT has the highest token id, so argmax finds it (this is also how open_clip pools).
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    proj = model.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return x
