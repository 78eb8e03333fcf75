"""The folder scan (`scan_image_paths` / `iter_image_paths`): which entries are images, what is
skipped and why, without ever opening a file."""
from __future__ import annotations

import os
import threading

from nsnet_sdk.pipeline import iter_image_paths, scan_image_paths


def _touch(path) -> str:
    path.write_bytes(b"x")
    return str(path)


def test_scan_classifies_every_entry_named_like_an_image(tmp_path):
    a = _touch(tmp_path / "a.JPG")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / ".DS_Store")            # hidden, not an image name: not worth a word
    _touch(tmp_path / ".secret.png")
    (tmp_path / ".git").mkdir()
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "dangling.webp").symlink_to(tmp_path / "gone.webp")
    (tmp_path / "dir.jpeg").mkdir()
    (tmp_path / "sub").mkdir()
    b = _touch(tmp_path / "sub" / "b.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "a.JPG")  # a symlink to a file is a file
    s = scan_image_paths([str(tmp_path)])
    assert s.files == [a, str(tmp_path / "link.png")]
    reasons = {os.path.basename(p): r for p, r in s.skipped}
    assert reasons == {".secret.png": "hidden", ".git": "hidden", "fifo.png": "FIFO",
                       "dangling.webp": "broken symlink", "dir.jpeg": "directory", "sub": "subfolder"}
    assert (s.hidden, s.subfolders, len(s.non_regular)) == (2, 2, 3)
    s = scan_image_paths([str(tmp_path)], recursive=True)
    assert s.files == sorted([a, str(tmp_path / "link.png"), b])
    assert s.subfolders == 0 and len(s.non_regular) == 2


def test_a_fifo_in_a_folder_is_never_opened(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes; the scan must finish regardless."""
    os.mkfifo(tmp_path / "wait.jpg")
    result = []
    t = threading.Thread(target=lambda: result.append(scan_image_paths([str(tmp_path)])), daemon=True)
    t.start()
    t.join(timeout=20)
    assert result and result[0].non_regular == [(str(tmp_path / "wait.jpg"), "FIFO")]


def test_recursive_scan_survives_symlink_loops_and_scans_each_folder_once(tmp_path):
    (tmp_path / "x").mkdir()
    img = _touch(tmp_path / "x" / "i.png")
    (tmp_path / "x" / "loop").symlink_to(tmp_path)
    (tmp_path / "again").symlink_to(tmp_path / "x")
    s = scan_image_paths([str(tmp_path)], recursive=True)
    assert len(s.files) == 1 and os.path.samefile(s.files[0], img)


def test_iter_image_paths_keeps_its_two_part_answer(tmp_path):
    a = _touch(tmp_path / "a.png")
    (tmp_path / "empty").mkdir()
    files, warnings = iter_image_paths([str(tmp_path), "explicit-missing.jpg",
                                        str(tmp_path / "empty")], recursive=False)
    assert files == [a, "explicit-missing.jpg"]
    # An empty folder without subfolders: nothing --recursive would find, so no such hint.
    assert warnings == [f"no image files in directory {tmp_path / 'empty'}"]
    (tmp_path / "empty" / "sub").mkdir()
    _, warnings = iter_image_paths([str(tmp_path / "empty")], recursive=False)
    assert warnings == [f"no image files in directory {tmp_path / 'empty'} "
                        "(use --recursive for subdirectories)"]


def test_a_symlink_loop_named_like_an_image_is_a_counted_skip_not_an_error(tmp_path):
    a = _touch(tmp_path / "a.png")
    (tmp_path / "self.png").symlink_to(tmp_path / "self.png")
    (tmp_path / "x.jpg").symlink_to(tmp_path / "y.jpg")
    (tmp_path / "y.jpg").symlink_to(tmp_path / "x.jpg")
    for recursive in (False, True):
        s = scan_image_paths([str(tmp_path)], recursive=recursive)
        assert s.files == [a]
        assert sorted(s.non_regular) == [(str(tmp_path / n), "symlink loop") for n in ("self.png", "x.jpg", "y.jpg")]
        assert sum("symlink loop" in w for w in s.warnings) == 3
