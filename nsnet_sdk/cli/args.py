"""Argument types shared by every ``nsnet`` subcommand's parser (so subcommand modules never import
`nsnet_sdk.cli`, which imports them)."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable


def checked(kind: type, ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse ``type=`` that converts with ``kind`` and accepts only values where ``ok``."""
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
        return v
    return parse


positive_int = checked(int, lambda v: v >= 1, "a positive integer")
nonneg_int = checked(int, lambda v: v >= 0, "an integer >= 0")
probability = checked(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def provider_list(text: str | None) -> list[str] | None:
    """``--providers a,b`` → ``["a", "b"]``; None when not given."""
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def progress_bar(total: int, quiet: bool):
    """A tqdm bar on stderr, or None where tqdm is not installed (the summary still counts);
    none for an empty run either (a 0/0 bar would only be printed twice)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="img", file=sys.stderr, disable=quiet or total == 0, dynamic_ncols=True)


def plural(count: int, noun: str) -> str:
    """``1 input``, ``2 inputs``: a count with its noun, as a summary line says it."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def add_provenance_options(p: argparse.ArgumentParser, anchors_note: str = "") -> None:
    """``--provenance`` and ``--trust-anchors``, as `nsnet detect` and `nsnet batch` take them."""
    from ..provenance import PROVENANCE_COLUMNS

    p.add_argument("--provenance", action="store_true", help="add what each file declares about its "
                   "origin (C2PA, IPTC digital source type, generator metadata) as columns: "
                   + ", ".join(PROVENANCE_COLUMNS))
    p.add_argument("--trust-anchors", metavar="PEM", help="CA certificates whose C2PA signers count "
                   f"as trusted (with --provenance{anchors_note})")


def provenance_option(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Any:
    """The Detector's ``provenance=`` from --provenance / --trust-anchors (usage errors here)."""
    if not args.provenance:
        if args.trust_anchors:
            parser.error("--trust-anchors needs --provenance")
        return False
    from ..provenance import ProvenanceReader

    try:
        return ProvenanceReader(trust_anchors=args.trust_anchors)
    except (OSError, ValueError) as e:
        parser.error(f"--trust-anchors: {e}")
