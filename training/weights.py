"""Where a backbone's pretrained weights come from: a local file, the Hugging Face cache, open_clip's
download cache or, on a connected machine only, a download; ``python -m training.weights fetch``
copies them into a folder to carry to an offline machine.

``--pretrained TAG`` is resolved here before open_clip sees it, so open_clip is only ever given a
file on disk (or a tag whose file it has cached): no network retries, and an offline machine gets
one line that says how to bring the weights.

    python -m training.weights fetch --model ViT-L-14 --tag openai --out DIR
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from training.cli_common import HelpFormatter, looks_like_path

# open_clip's names for the weights file of a Hugging Face repo; the safetensors one is preferred
# (no unpickling), as open_clip itself does.
HF_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
PROBE_TIMEOUT_S = 3.0


class WeightsUnavailable(RuntimeError):
    """The weights of a tag are not on this machine and cannot be downloaded; the message (one
    line) says how to bring them, ``why`` says what stopped the download."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


@dataclass(frozen=True)
class Located:
    """What to hand open_clip for ``--pretrained``, and where it came from."""

    arg: str | None          # a file path, a tag whose file open_clip has cached, or None (random init)
    source: str              # none | file | hf-cache | clip-cache | download
    tag: str | None          # the open_clip tag, when known (also from a fetched file's sidecar)
    quick_gelu: bool | None  # from the tag's config or the sidecar; None: the model config decides

    def to_dict(self) -> dict:
        return {"source": self.source, "tag": self.tag, "path": self.arg if self.source != "none" else None}


def resolve_pretrained(pretrained: str | None) -> str | None:
    """``none`` / empty → None (random init); otherwise an open_clip tag or a local weights file."""
    if pretrained is None or str(pretrained).strip().lower() in ("", "none", "random"):
        return None
    return str(pretrained)


def offline() -> bool:
    """True when Hugging Face's offline switch is set (read now, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, honouring HF_HUB_CACHE / HF_HOME as set now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface" / "hub"


def clip_cache_dir() -> Path:
    """open_clip's cache for weights downloaded by URL (its default)."""
    return Path.home() / ".cache" / "clip"


def fetch_command(backbone: str, tag: str) -> str:
    return f"python -m training.weights fetch --model {backbone} --tag {tag} --out DIR"


def _pretrained_cfg(backbone: str, tag: str, flag: str = "--pretrained") -> dict:
    import open_clip

    import nsnet_sdk.model  # noqa: F401  (registers nsnet-tiny)

    cfg = open_clip.get_pretrained_cfg(backbone, tag)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(backbone)) or "none for this model"
        if flag != "--pretrained":
            raise ValueError(f"{flag} {tag!r} is not an open_clip tag of {backbone} (its tags: {known})")
        raise ValueError(f"--pretrained {tag!r} is neither a file nor an open_clip tag of {backbone} "
                         f"(its tags: {known}); or pass a local weights file, or 'none' for random weights")
    return cfg


def _hf_repo(cfg: dict) -> tuple[str, tuple[str, ...]] | None:
    """(repo id, candidate file names) of a tag's Hugging Face entry, as open_clip reads it."""
    if not cfg.get("hf_hub"):
        return None
    hub = cfg["hf_hub"]
    if hub.endswith("/"):  # 'org/repo/' means open_clip's default file names
        return hub.rstrip("/"), HF_FILENAMES
    repo, filename = os.path.split(hub)
    alternatives = (filename[:-4] + ".safetensors",) if filename.endswith((".bin", ".pth")) else ()
    return repo, (*alternatives, filename)


def cached_file(backbone: str, tag: str) -> tuple[str, str] | None:
    """(path or tag to give open_clip, cache name) when the tag's weights are already on disk."""
    from huggingface_hub import try_to_load_from_cache

    cfg = _pretrained_cfg(backbone, tag)
    hf = _hf_repo(cfg)
    if hf:
        for name in hf[1]:
            path = try_to_load_from_cache(hf[0], name, cache_dir=str(hf_cache_dir()))
            if isinstance(path, str) and Path(path).is_file():
                return path, "hf-cache"
    if cfg.get("url") and (clip_cache_dir() / os.path.basename(cfg["url"])).is_file():
        return tag, "clip-cache"  # open_clip finds it there (and checks its sha256) without a request
    return None


def _reachable(url: str) -> str | None:
    """None when a TCP connection to ``url``'s host opens within a few seconds, else the reason."""
    host = urlparse(url).hostname or url
    try:
        socket.create_connection((host, 443), timeout=PROBE_TIMEOUT_S).close()
        return None
    except OSError as exc:
        return f"cannot reach {host} ({exc.strerror or type(exc).__name__})"


def _unavailable(backbone: str, tag: str, why: str) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"--pretrained {tag}: the {backbone} '{tag}' weights are not on this machine (Hugging Face cache "
        f"{hf_cache_dir()}) and {why}. On a connected machine run `{fetch_command(backbone, tag)}`, copy DIR "
        f"here and pass --pretrained with the file it wrote (docs/training.md, 'Offline weights')", why)


def download(backbone: str, tag: str) -> str:
    """Download a tag's weights into the usual cache (one attempt); the local path.
    WeightsUnavailable, one line, when offline or the host does not answer."""
    from huggingface_hub import constants, hf_hub_download

    cfg = _pretrained_cfg(backbone, tag)
    hf = _hf_repo(cfg)
    if offline():
        raise _unavailable(backbone, tag, "HF_HUB_OFFLINE is set")
    why = _reachable(constants.ENDPOINT if hf else cfg.get("url", ""))
    if why:
        raise _unavailable(backbone, tag, why)
    errors = []
    if hf:
        for name in hf[1]:
            try:
                return hf_hub_download(hf[0], name, cache_dir=str(hf_cache_dir()))
            except Exception as exc:  # a missing alternative (404) or a network error: try the next
                errors.append(f"{name}: {type(exc).__name__}")
    if cfg.get("url"):
        import open_clip

        try:
            return open_clip.download_pretrained_from_url(cfg["url"], cache_dir=str(clip_cache_dir()))
        except Exception as exc:
            errors.append(f"{cfg['url']}: {type(exc).__name__}: {exc}")
    raise _unavailable(backbone, tag, "the download failed (" + "; ".join(errors) + ")")


def read_sidecar(path: Path) -> dict:
    """The JSON written next to a fetched weights file (``<stem>.json``), or {}."""
    side = path.with_suffix(".json")
    if not side.is_file() or side == path:
        return {}
    try:
        doc = json.loads(side.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def locate(backbone: str, pretrained: str | None) -> Located:
    """Resolve ``--pretrained`` ('none', a file, or a tag) to what open_clip should load.

    A tag is looked up in the Hugging Face cache and open_clip's URL cache first; only when absent
    and the machine is online is it downloaded. ValueError for an unknown tag or a file that does not
    exist or was fetched for another model; WeightsUnavailable when the weights cannot be had here."""
    name = resolve_pretrained(pretrained)
    if name is None:
        return Located(None, "none", None, None)
    path = Path(name)
    if path.is_file():
        side = read_sidecar(path)
        if side.get("model") and side["model"] != backbone:
            raise ValueError(f"--pretrained {path} holds {side['model']} weights, not {backbone}")
        qg = side.get("quick_gelu")
        return Located(str(path), "file", side.get("tag"), bool(qg) if qg is not None else None)
    if looks_like_path(name):
        raise ValueError(f"--pretrained {name}: no such weights file")
    cfg = _pretrained_cfg(backbone, name)
    qg = bool(cfg.get("quick_gelu", False))
    hit = cached_file(backbone, name)
    if hit:
        return Located(hit[0], hit[1], name, qg)
    return Located(download(backbone, name), "download", name, qg)


def fetch(backbone: str, tag: str, out: str | Path) -> Path:
    """Download (or take from the cache) a tag's weights and copy them to ``out`` as
    ``<model>-<tag>.<ext>`` with a ``<model>-<tag>.json`` sidecar (model, tag, QuickGELU, sha256)
    that ``--pretrained FILE`` reads on the offline machine."""
    from nsnet_sdk.containers import sha256_file

    cfg = _pretrained_cfg(backbone, tag, flag="--tag")
    hit = cached_file(backbone, tag)
    src = Path(hit[0]) if hit and hit[1] == "hf-cache" else None
    if src is None:
        got = download(backbone, tag) if not hit else str(clip_cache_dir() / os.path.basename(cfg["url"]))
        src = Path(got)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dst = out / f"{backbone}-{tag}{src.suffix}"
    shutil.copyfile(src, dst)
    sidecar = {"model": backbone, "tag": tag, "quick_gelu": bool(cfg.get("quick_gelu", False)),
               "source": cfg.get("hf_hub") or cfg.get("url"), "sha256": sha256_file(dst)}
    dst.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.weights", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", formatter_class=HelpFormatter,
                       help="download a (model, tag) pair's weights into a folder to copy to an offline machine")
    f.add_argument("--model", required=True, help="open_clip model name, e.g. ViT-L-14")
    f.add_argument("--tag", required=True, help="open_clip pretrained tag, e.g. openai")
    f.add_argument("--out", required=True, help="folder to write <model>-<tag>.<ext> and its .json sidecar into")
    args = p.parse_args(argv)
    try:
        dst = fetch(args.model, args.tag, args.out)
    except WeightsUnavailable as exc:
        print(f"error: cannot fetch the {args.model} '{args.tag}' weights: {exc.why}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {dst} (+ {dst.with_suffix('.json').name}); on the offline machine: "
          f"python -m training.train --backbone {args.model} --pretrained {dst} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
