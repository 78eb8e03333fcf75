"""Hand-made hostile image files for the decoding tests: bombs (a small file declaring a huge
allocation), slow files (a small file declaring thousands of passes, frames or pages) and
truncated files. Each is built by editing a valid file written by Pillow or OpenCV."""
from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def png_chunk(tag: bytes, data: bytes, length: int | None = None) -> bytes:
    crc = struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    return struct.pack(">I", len(data) if length is None else length) + tag + data + crc


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w×h but which carries a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


def png_idat_says_4gb() -> bytes:
    """The issue's PNG: 8×10 pixels, an IDAT chunk whose length field says ~4 GB (88 bytes)."""
    ihdr = struct.pack(">IIBBBBB", 8, 10, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * (10 * 25))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body, 0xFFFFFF00)
            + png_chunk(b"IEND", b""))


def jpeg_with_size(w: int, h: int, keep: int | None = None) -> bytes:
    """A 64×64 JPEG whose frame header is edited to declare w×h (optionally cut to ``keep`` bytes
    plus EOI): the decoder invents everything the 64×64 data does not cover."""
    data = bytearray(encode(Image.fromarray(noise(64, 64)), "JPEG", quality=90))
    i = data.find(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", h, w)
    if keep is not None:
        data = data[:keep] + b"\xff\xd9"
    return bytes(data)


def jpeg_many_scans(scans: int, side: int = 1024) -> bytes:
    """A progressive JPEG of a flat image with its last scan repeated until it has ``scans``
    scans: a few hundred KB that makes libjpeg pass over every coefficient ``scans`` times."""
    data = encode(Image.new("RGB", (side, side), (120, 130, 140)), "JPEG", progressive=True, quality=90)
    last_sos = data.rfind(b"\xff\xda")
    eoi = data.rfind(b"\xff\xd9")
    scan = data[last_sos:eoi]
    have = data.count(b"\xff\xda")
    return data[:eoi] + scan * max(0, scans - have) + data[eoi:]


def gif_frame_outside_screen(fw: int = 65535, fh: int = 65535) -> bytes:
    """A 16×16 GIF whose one image descriptor is edited to fw×fh: Pillow grows the canvas to hold it."""
    data = bytearray(encode(Image.fromarray(noise(16, 16)).quantize(16), "GIF"))
    i = data.find(b"\x2c\x00\x00\x00\x00")
    data[i + 5 : i + 9] = struct.pack("<HH", fw, fh)
    return bytes(data)


def gif_many_frames(frames: int) -> bytes:
    """A 256×256 GIF followed by ``frames`` 1×1 frames (~20 bytes each)."""
    data = encode(Image.fromarray(noise(256, 256)).quantize(16), "GIF")
    frame = b"\x21\xf9\x04\x00\x00\x00\x00\x00" + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return data[:-1] + frame * frames + b"\x3b"


def webp_canvas(w: int, h: int) -> bytes:
    """A lossless 16×16 WebP wrapped in a VP8X header declaring a w×h canvas."""
    small = encode(Image.fromarray(noise(16, 16)), "WEBP", lossless=True)
    vp8l = small[12:]
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + vp8l
    return b"RIFF" + struct.pack("<I", len(body)) + body


def bmp_rle_with_size(w: int, h: int) -> bytes:
    """An 8-bit RLE BMP header declaring w×h with a few bytes of runs."""
    pal = bytes(range(256)) * 4
    pixels = b"\x02\x07\x00\x01"  # a run of two, then end of bitmap
    offset = 14 + 40 + len(pal)
    dib = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + dib + pal + pixels


def bmp_header_only(w: int, h: int) -> bytes:
    """An uncompressed 24-bit BMP declaring w×h that carries 64 bytes of pixels."""
    dib = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 64, 0, 0, 54) + dib + b"\x80" * 64


def pnm_header_only(w: int, h: int) -> bytes:
    return f"P6\n{w} {h}\n255\n".encode() + b"\x80" * 64


def _tiff_entries(data: bytes) -> tuple[str, int, int]:
    e = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(e + "I", data[4:8])
    (count,) = struct.unpack(e + "H", data[ifd : ifd + 2])
    return e, ifd, count


def tiff_duplicate_size(first: tuple[int, int], last: tuple[int, int]) -> bytes:
    """The issue's TIFF: ImageWidth/ImageLength appear twice; libtiff reads the first pair
    (``first``), a naive sniffer the last (``last``)."""
    data = bytearray(encode(Image.fromarray(noise(last[1], last[0])), "TIFF"))
    e, ifd, count = _tiff_entries(bytes(data))
    entries = [bytes(data[ifd + 2 + 12 * k : ifd + 14 + 12 * k]) for k in range(count)]
    extra = [struct.pack(e + "HHII", 256, 4, 1, first[0]), struct.pack(e + "HHII", 257, 4, 1, first[1])]
    new = extra + entries  # the duplicates come first
    table = struct.pack(e + "H", len(new)) + b"".join(new) + b"\x00\x00\x00\x00"
    new_ifd = len(data)
    data[4:8] = struct.pack(e + "I", new_ifd)
    return bytes(data) + table


def tiff_tiles(image: tuple[int, int], tile: tuple[int, int], spp: int = 3) -> bytes:
    """A little-endian, deflate-compressed, tiled 8-bit TIFF of ``image`` pixels with ``tile``-sized
    tiles, each tile's data a small deflate stream of zeros."""
    (w, h), (tw, th) = image, tile
    n_tiles = -(-w // tw) * -(-h // th)
    payload = zlib.compress(b"\x00" * min(tw * th * spp, 1 << 16))
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 2 if spp == 3 else 1),
               (277, 3, 1, spp), (284, 3, 1, 1), (322, 4, 1, tw), (323, 4, 1, th)]
    ifd = 8
    table_len = 2 + 12 * (len(entries) + 2) + 4
    arrays = ifd + table_len
    data_at = arrays + 8 * n_tiles
    offsets = struct.pack(f"<{n_tiles}I", *([data_at] * n_tiles))
    counts = struct.pack(f"<{n_tiles}I", *([len(payload)] * n_tiles))
    if n_tiles == 1:
        entries += [(324, 4, 1, data_at), (325, 4, 1, len(payload))]
    else:
        entries += [(324, 4, n_tiles, arrays), (325, 4, n_tiles, arrays + 4 * n_tiles)]
    out = b"II*\x00" + struct.pack("<I", ifd) + struct.pack("<H", len(entries))
    for tag, typ, cnt, val in entries:
        out += struct.pack("<HHI", tag, typ, cnt) + (struct.pack("<HH", val, 0) if typ == 3 else struct.pack("<I", val))
    out += b"\x00\x00\x00\x00"
    return out + offsets + counts + payload


def tiff_size(w: int, h: int) -> bytes:
    """A 16×16 TIFF whose ImageWidth/ImageLength are edited to w×h."""
    data = bytearray(encode(Image.fromarray(noise(16, 16)), "TIFF"))
    e, ifd, count = _tiff_entries(bytes(data))
    for k in range(count):
        at = ifd + 2 + 12 * k
        tag, typ = struct.unpack(e + "HH", data[at : at + 4])
        if tag in (256, 257):
            v = w if tag == 256 else h
            data[at + 8 : at + 12] = struct.pack(e + "H", v) + b"\0\0" if typ == 3 else struct.pack(e + "I", v)
    return bytes(data)


def tiff_many_pages(pages: int) -> bytes:
    """A 64×64 TIFF followed by ``pages`` extra directories that all point at its pixels."""
    data = bytearray(encode(Image.fromarray(noise(64, 64)), "TIFF"))
    e, ifd, count = _tiff_entries(bytes(data))
    table = bytes(data[ifd + 2 : ifd + 2 + 12 * count])
    size = 2 + 12 * count + 4
    start = len(data)
    data[ifd + 2 + 12 * count : ifd + 6 + 12 * count] = struct.pack(e + "I", start)
    out = bytearray()
    for p in range(pages):
        nxt = start + size * (p + 1) if p + 1 < pages else 0
        out += struct.pack(e + "H", count) + table + struct.pack(e + "I", nxt)
    return bytes(data + out)


def png_deflate_bomb(megabytes: int = 512) -> bytes:
    """A 64×64 PNG whose IDAT stream goes on to inflate to ``megabytes`` MB of zeros (~1000:1)."""
    w = h = 64
    z = zlib.compressobj(9)
    body = z.compress(b"\x00" * (h * (1 + 3 * w)))
    block = b"\x00" * (1 << 20)
    body += b"".join(z.compress(block) for _ in range(megabytes)) + z.flush()
    idat = b"".join(png_chunk(b"IDAT", body[i : i + (1 << 20)]) for i in range(0, len(body), 1 << 20))
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + png_chunk(b"IEND", b"")


def apng_many_frames(frames: int) -> bytes:
    """A 64×64 PNG declaring an animation of ``frames`` frame-control chunks (each 38 bytes)."""
    data = encode(Image.fromarray(noise(64, 64)), "PNG")
    i = data.find(b"IDAT") - 4
    actl = png_chunk(b"acTL", struct.pack(">II", frames, 0))
    fctl = b"".join(png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", k, 64, 64, 0, 0, 1, 10, 0, 0))
                    for k in range(frames))
    return data[:i] + actl + fctl + data[i:]


def png_many_chunks(chunks: int) -> bytes:
    """A 64×64 PNG with ``chunks`` empty private chunks before its pixels."""
    data = encode(Image.fromarray(noise(64, 64)), "PNG")
    i = data.find(b"IDAT") - 4
    return data[:i] + png_chunk(b"prVt", b"") * chunks + data[i:]


def avif_with_ispe(w: int, h: int) -> bytes:
    ok, enc = cv2.imencode(".avif", noise(33, 77)[:, :, ::-1])
    data = bytearray(enc.tobytes())
    i = data.find(b"ispe")
    data[i + 8 : i + 16] = struct.pack(">II", w, h)
    return bytes(data)


def jp2_with_siz(w: int, h: int, components: int | None = None) -> bytes:
    """An OpenCV JPEG 2000 file whose codestream SIZ (not the jp2 ihdr box) declares w×h."""
    ok, enc = cv2.imencode(".jp2", noise(64, 64)[:, :, ::-1])
    data = bytearray(enc.tobytes())
    i = data.find(b"\xff\x4f\xff\x51")
    data[i + 8 : i + 16] = struct.pack(">II", w, h)
    data[i + 24 : i + 32] = struct.pack(">II", w, h)  # one tile covering the image
    if components is not None:
        data[i + 40 : i + 42] = struct.pack(">H", components)
    return bytes(data)


def jp2_tiles(w: int = 255, h: int = 257, tile: int = 1) -> bytes:
    """An OpenCV JPEG 2000 file whose SIZ declares a w×h image cut into tile×tile tiles."""
    data = bytearray(jp2_with_siz(w, h))
    i = data.find(b"\xff\x4f\xff\x51")
    data[i + 24 : i + 32] = struct.pack(">II", tile, tile)
    return bytes(data)


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full_box(kind: bytes, version: int, body: bytes) -> bytes:
    return _box(kind, bytes([version, 0, 0, 0]) + body)


def avif_grid(canvas: int = 16384, tile: int = 1024, iloc_counts: tuple[int, int] | None = None) -> bytes:
    """An AVIF whose primary item is a grid with a canvas×canvas output while its only ispe box
    says tile×tile (as a lying file would): item 1 is the grid (descriptor in idat), item 2 a tile."""
    infe = lambda item, kind: _full_box(b"infe", 2, struct.pack(">HH", item, 0) + kind + b"\x00")  # noqa: E731
    grid = bytes([0, 1, 15, 15]) + struct.pack(">II", canvas, canvas)  # 16×16 tiles, 32-bit sizes
    iloc = _full_box(b"iloc", 1, bytes([0x44, 0x00]) + struct.pack(">H", 1)
                     + struct.pack(">HHHHII", 1, 1, 0, 1, 0, len(grid)))
    if iloc_counts is not None:
        # (items, extents per item) with zero-byte offset and length fields: every extent is
        # "read" without moving, so only the declared counts bound the walk.
        items, extents = iloc_counts
        iloc = _full_box(b"iloc", 1, bytes([0x00, 0x00]) + struct.pack(">H", items)
                         + struct.pack(">HHHH", 1, 1, 0, extents) * items)
    ipco = _box(b"ipco", _full_box(b"ispe", 0, struct.pack(">II", tile, tile)))
    ipma = _full_box(b"ipma", 0, struct.pack(">I", 2) + struct.pack(">HB", 1, 1) + b"\x81"
                     + struct.pack(">HB", 2, 1) + b"\x81")
    meta = _full_box(b"meta", 0, _full_box(b"hdlr", 0, b"\x00" * 4 + b"pict" + b"\x00" * 13)
                     + _full_box(b"pitm", 0, struct.pack(">H", 1))
                     + _full_box(b"iinf", 0, struct.pack(">H", 2) + infe(1, b"grid") + infe(2, b"av01"))
                     + iloc + _box(b"idat", grid) + _box(b"iprp", ipco + ipma))
    return _box(b"ftyp", b"avif\x00\x00\x00\x00avifmif1miaf") + meta + _box(b"mdat", b"\x00" * 16)


def jpeg_arithmetic(w: int = 10000, h: int = 10000, coded: int = 8) -> bytes:
    """A greyscale arithmetic-coded (SOF9) JPEG declaring w×h with ``coded`` bytes of scan data."""
    seg = lambda m, body: b"\xff" + bytes([m]) + struct.pack(">H", len(body) + 2) + body  # noqa: E731
    return (b"\xff\xd8" + seg(0xDB, b"\x00" + bytes(range(1, 65)))
            + seg(0xC9, struct.pack(">BHHB", 8, h, w, 1) + b"\x01\x11\x00")
            + seg(0xDA, b"\x01\x01\x00\x00\x3f\x00") + b"\x5a" * coded + b"\xff\xd9")


def jpeg_with_app_segments(total: int, side: int = 64) -> bytes:
    """A side×side JPEG carrying ``total`` bytes of APP15 segments (each at most 65,533 bytes)."""
    data = encode(Image.fromarray(noise(side, side)), "JPEG")
    full, rest = divmod(total, 65533)
    app = (b"\xff\xef\xff\xff" + b"\x00" * 65533) * full + (
        b"\xff\xef" + struct.pack(">H", rest + 2) + b"\x00" * rest if rest else b"")
    return data[:2] + app + data[2:]


def tiff_jpeg_strip(scans: int = 150, side: int = 64) -> bytes:
    """A side×side TIFF (Compression 7, JPEG) whose one strip is a ``scans``-scan progressive JPEG."""
    strip = jpeg_many_scans(scans, side=side)
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 7), (262, 3, 1, 6),
               (273, 4, 1, 0), (277, 3, 1, 3), (278, 4, 1, side), (279, 4, 1, len(strip)), (284, 3, 1, 1)]
    data_at = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    for tag, typ, cnt, val in entries:
        val = data_at if tag == 273 else val
        out += struct.pack("<HHI", tag, typ, cnt) + (struct.pack("<HH", val, 0) if typ == 3 else struct.pack("<I", val))
    return out + b"\x00\x00\x00\x00" + strip


def tiff_raw(w: int, h: int, tags: list[tuple[int, int, list[int]]], strips: list[bytes],
             big: bool = False) -> bytes:
    """A little-endian uncompressed TIFF (``big``: BigTIFF, 64-bit offsets) with ``tags``
    ((tag, type, values), SHORT=3 / LONG=4) plus StripOffsets/StripByteCounts for ``strips``."""
    entries = sorted(tags + [(273, 4, [0] * len(strips)), (279, 4, [len(s) for s in strips])])
    word, entry, count = ("Q", 20, "Q") if big else ("I", 12, "H")
    head = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) if big else b"II*\x00" + struct.pack("<I", 8)
    arrays_at = len(head) + struct.calcsize(count) + entry * len(entries) + struct.calcsize(word)
    arrays = b""
    big_arrays = sum(len(v) * (2 if t == 3 else 4) for _, t, v in entries
                     if len(v) * (2 if t == 3 else 4) > struct.calcsize(word))
    at, offsets = arrays_at + big_arrays, []
    for s in strips:
        offsets.append(at)
        at += len(s)
    ifd = struct.pack("<" + count, len(entries))
    for tag, typ, vals in entries:
        vals = offsets if tag == 273 else vals
        raw = struct.pack("<" + ("H" if typ == 3 else "I") * len(vals), *vals)
        if len(raw) <= struct.calcsize(word):
            field = raw.ljust(struct.calcsize(word), b"\x00")
        else:
            field = struct.pack("<" + word, arrays_at + len(arrays))
            arrays += raw
        ifd += struct.pack("<HH" + word, tag, typ, len(vals)) + field
    return head + ifd + b"\x00" * struct.calcsize(word) + arrays + b"".join(strips)


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Rows of unsigned samples packed MSB-first at ``bits`` per sample, each row byte-aligned."""
    out = bytearray()
    for row in values:
        s = "".join(format(int(v), f"0{bits}b") for v in row)
        out += int(s + "0" * (-len(s) % 8), 2).to_bytes((len(s) + 7) // 8, "big")
    return bytes(out)
