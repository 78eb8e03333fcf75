"""The one folder scan every tool uses (`iter_image_paths`, `scan_image_paths`): which files in a
folder are images to score, and what was left out and why."""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Sequence

from .decode import IMAGE_SUFFIXES

__all__ = ["ImageScan", "iter_image_paths", "scan_image_paths"]


@dataclass
class ImageScan:
    """What a folder scan found: the image files to score and what it left out, with why.

    ``skipped`` lists ``(path, reason)`` for every entry left out that a user could have meant:
    non-regular entries named like images (``reason`` says which: ``FIFO``, ``socket``,
    ``device``, ``broken symlink``, ``symlink loop``, ``directory``, ...; a loop or an entry that
    cannot be stat-ed also gets a warning), ``hidden`` image files and dot-folders
    (without ``hidden``), and other ``subfolder``s (without ``recursive``; a ``directory`` named
    like an image is a subfolder too). ``warnings`` are one-line messages for the user.
    """

    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def non_regular(self) -> list[tuple[str, str]]:
        """Skipped entries named like images that are not regular files."""
        return [(p, r) for p, r in self.skipped if r not in ("hidden", "subfolder")]

    @property
    def hidden(self) -> int:
        """How many hidden image files and dot-folders were skipped."""
        return sum(r == "hidden" for _, r in self.skipped)

    @property
    def subfolders(self) -> int:
        """How many subfolders ``recursive`` would have entered."""
        return sum(r in ("subfolder", "directory") for _, r in self.skipped)


def _looks_like_image(name: str) -> bool:
    low = name.lower()
    return os.path.splitext(low)[1] in IMAGE_SUFFIXES or low in IMAGE_SUFFIXES  # ".jpg" itself too


def _entry_kind(path: str) -> str:
    """``"file"``, ``"dir"`` or why the entry is neither (symlinks followed)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "broken symlink"
    except OSError as e:
        return "symlink loop" if e.errno == errno.ELOOP else f"cannot stat: {e.strerror or e}"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "not a regular file"


def _classify(entry: os.DirEntry) -> str:
    """`_entry_kind` of a folder entry; is_file/is_dir follow symlinks and usually need no extra
    stat (d_type), but raise for a symlink loop (ELOOP) or an entry that vanished meanwhile."""
    try:
        if entry.is_file():
            return "file"
        if entry.is_dir():
            return "dir"
    except OSError:
        pass
    return _entry_kind(entry.path)


def scan_image_paths(paths: Sequence[str], recursive: bool = False, *,
                     hidden: bool = False) -> ImageScan:
    """Expand directories to their image files (by name, `IMAGE_SUFFIXES`; sorted per argument);
    other paths are kept as given (explicit files are always attempted, even missing ones).

    Never opens a file: entries are classified with ``stat`` (symlinks followed), so a FIFO or a
    device inside a folder is skipped and reported, not read. Names starting with ``.`` (files
    and folders) are skipped unless ``hidden``; subfolders are entered only when ``recursive``
    (symlinked folders too, each real folder once).
    """
    scan = ImageScan()
    for raw in paths:
        if not os.path.isdir(raw):
            scan.files.append(raw)
            continue
        found: list[str] = []
        seen: set[tuple[int, int]] = set()
        stack = [raw]
        while stack:
            folder = stack.pop()
            try:
                st = os.stat(folder)
                if (st.st_dev, st.st_ino) in seen:  # a symlink loop, or a second link to one folder
                    continue
                seen.add((st.st_dev, st.st_ino))
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                scan.warnings.append(f"cannot list folder {folder}: {e.strerror or e}")
                continue
            for entry in entries:
                name, path = entry.name, entry.path
                image_name = _looks_like_image(name)
                kind = _classify(entry)
                if name.startswith(".") and not hidden:
                    if image_name or kind == "dir":
                        scan.skipped.append((path, "hidden"))
                elif kind == "dir" and recursive:
                    stack.append(path)
                elif kind == "dir":  # one named like an image is also a non-regular entry
                    scan.skipped.append((path, "directory" if image_name else "subfolder"))
                elif image_name and kind == "file":
                    found.append(path)
                elif image_name:
                    scan.skipped.append((path, kind))
                    if kind == "symlink loop" or kind.startswith("cannot stat"):
                        scan.warnings.append(f"skipped {path}: {kind}")
        if not found:
            # --recursive is suggested only where it would find something to look into.
            has_subfolders = any(reason == "subfolder" and path.startswith(os.path.join(raw, ""))
                                 for path, reason in scan.skipped)
            scan.warnings.append(f"no image files in directory {raw}"
                                 + (" (use --recursive for subdirectories)" if has_subfolders else ""))
        scan.files.extend(sorted(found))
    return scan


def iter_image_paths(paths: Sequence[str], recursive: bool,
                     *, hidden: bool = False) -> tuple[list[str], list[str]]:
    """(inputs, warnings) of `scan_image_paths`: directories expanded to their image files (sorted),
    other paths as given.

    The one folder scan: the CLI, training data discovery, export's verify and the benchmarks all
    list images through it, so they agree on what counts as an image file.
    """
    scan = scan_image_paths(paths, recursive, hidden=hidden)
    return scan.files, scan.warnings
