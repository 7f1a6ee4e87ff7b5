"""Decoding images of any mode into 8-bit gray or RGB arrays (EXIF orientation applied), and the
augmentation ops: the symmetries of the square used to balance classes."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from imgclust.errors import CorruptImageError, OutputCollisionError, OutputWriteError, ParamError

try:  # zlib-ng inflates in half the time: the PNG row check below inflates every ingested image
    from zlib_ng import zlib_ng as zlib
except ImportError:  # pragma: no cover - a dependency; the standard zlib inflates to the same bytes,
    import zlib  # but deflates (png_bytes) to other ones: valid PNGs of the same pixels

RESAMPLE_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
COLOR_MODES = {"gray": "L", "rgb": "RGB"}
# the largest width or height the stages resize to (resize.width/height): 4096 x 4096 RGB is 48 MiB
# an image, already far beyond what the features or the clustering can use
MAX_IMAGE_SIDE = 4096


# How the stages write PNGs (resize, augment): every row "Sub"-filtered (each byte's difference to
# the same channel of the pixel before it), then deflated at zlib level 1 with run-length matching
# (Z_RLE). Pillow's encoder tries all five PNG filters on every row and keeps the smallest: 0.82 ms
# per 190 x 190 gray phantom (0.90 ms busi256) against 0.21 ms (0.22 ms) here, into files 2 % larger
# (19.8 vs 19.4 KiB; busi256 21.4 vs 20.9 KiB) that decode in 0.32 vs 0.44 ms; 300 images each. The
# "Up" filter was as fast but its busi256 files 21 % larger. Level 1 and Z_RLE: on such speckled
# images level 1 encoded 20 % faster than level 6 for 8 % larger files, and Z_RLE 25 % faster
# again, into smaller files. Other arrays (not 8-bit gray or RGB) go through Pillow.
PNG_LEVEL, PNG_STRATEGY = 1, 3  # 3: zlib's Z_RLE
PNG_FILTER_SUB = 1
PNG_COLOR_TYPES = {1: 0, 3: 2}  # channels (gray H x W, RGB H x W x 3) -> PNG colour type
PNG_OPTIONS = {"format": "PNG", "compress_level": PNG_LEVEL, "compress_type": PNG_STRATEGY}  # Pillow's route


def save_new_png(array: np.ndarray, path: Path) -> None:
    """Write ``array`` as a PNG to ``path``, which must not exist: opened for exclusive creation, so
    a file that is hard-linked elsewhere (an input, the DVC cache) is never written through."""
    data = png_bytes(array)
    try:
        with open(path, "xb") as fh:
            fh.write(data)
    except FileExistsError:
        raise OutputCollisionError(f"{path}: already exists; two outputs share this name.") from None
    except OSError as exc:
        from imgclust.core.fsutil import write_error

        error = write_error(exc, path)
        if error is None:
            raise OutputWriteError(f"{path}: cannot be written ({exc.strerror or exc}).") from exc
        raise error from exc


def png_bytes(array: np.ndarray) -> bytes:
    """``array`` encoded as the PNG that ``save_new_png`` writes (see PNG_LEVEL)."""
    array = np.asarray(array)
    channels = 1 if array.ndim == 2 else array.shape[2] if array.ndim == 3 else None
    color_type = PNG_COLOR_TYPES.get(channels)
    if array.dtype != np.uint8 or color_type is None or not array.size:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, **PNG_OPTIONS)
        return buffer.getvalue()
    height, width = array.shape[:2]
    rows = array.reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = PNG_FILTER_SUB  # each row starts with its filter type
    filtered[:, 1 : 1 + channels] = rows[:, :channels]
    # modulo 256, as the filter is defined
    np.subtract(rows[:, channels:], rows[:, :-channels], out=filtered[:, 1 + channels :])
    deflater = zlib.compressobj(PNG_LEVEL, zlib.DEFLATED, 15, 8, PNG_STRATEGY)
    pixels = deflater.compress(filtered) + deflater.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"".join((PNG_SIGNATURE, _png_chunk(b"IHDR", header), _png_chunk(b"IDAT", pixels), _png_chunk(b"IEND", b"")))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def resample_filter(name: str) -> Image.Resampling:
    try:
        return RESAMPLE_FILTERS[name]
    except KeyError:
        raise ParamError(f"unknown resample filter {name!r}; use one of {', '.join(RESAMPLE_FILTERS)}") from None


def pil_mode(color_mode: str) -> str:
    try:
        return COLOR_MODES[color_mode]
    except KeyError:
        raise ParamError(f"unknown color mode {color_mode!r}; use 'gray' or 'rgb'") from None


def _to_8bit(image: Image.Image) -> Image.Image:
    """Map 16/32-bit integer and float images to 8 bits by their value range, not by clipping."""
    array = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
        array = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
    elif image.mode.startswith("I;16") or array.max(initial=0) > 255:
        # 16-bit data (also 16-bit PNGs that Pillow opens as mode "I"): 65535 -> 255
        array = array / (65535.0 if array.max(initial=0) <= 65535 else array.max()) * 255.0
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")


def convert(image: Image.Image, color_mode: str) -> Image.Image:
    """Convert any Pillow mode (1, L, P, RGBA, LA, CMYK, I;16, I, F, ...) to 8-bit gray or RGB.

    Transparent pixels are composited onto black, the background of an ultrasound frame.
    """
    target = pil_mode(color_mode)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != target:
        image = image.convert(target)
    return image


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_row_bytes(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> int:
    """How many bytes the inflated image data of a PNG must hold: a filter byte and the pixels of
    every row (of every Adam7 pass, for an interlaced image)."""

    def rows(w: int, h: int) -> int:
        return h * (1 + (w * bits_per_pixel + 7) // 8) if w and h else 0

    if not interlaced:
        return rows(width, height)
    return sum(
        rows((width - x0 + dx - 1) // dx if width > x0 else 0, (height - y0 + dy - 1) // dy if height > y0 else 0)
        for x0, y0, dx, dy in _ADAM7
    )


def check_png_rows(data: bytes) -> None:
    """Raise OSError unless the image data (IDAT) of the PNG ``data`` inflates to every row.

    Pillow's decoder stops where the zlib stream ends, even when that is before the last row, and
    leaves the missing rows black without a word (LOAD_TRUNCATED_IMAGES or not): a file whose
    complete, CRC-valid stream holds only some rows would be accepted. The stream is inflated here
    in bounded pieces (never held whole) and its length compared with what the header promises.
    """
    if not data.startswith(PNG_SIGNATURE):
        return
    pos, header, inflater, produced, ended = len(PNG_SIGNATURE), None, zlib.decompressobj(), 0, False
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR" and len(body) >= 13:
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body[:13])
            header = (width, height, depth * _PNG_CHANNELS.get(colour, 1), interlace == 1)
        elif kind == b"IDAT" and not ended:
            try:
                piece = inflater.decompress(body, 1 << 20)
                while piece:
                    produced += len(piece)
                    piece = inflater.decompress(inflater.unconsumed_tail, 1 << 20)
            except zlib.error as exc:
                raise OSError(f"broken image data ({exc})") from exc
            ended = inflater.eof
        elif kind == b"IEND":
            break
    if header is None:
        raise OSError("no IHDR chunk")
    expected = _png_row_bytes(*header)
    if produced < expected:
        raise OSError(
            f"image data stops early: {produced} of {expected} bytes "
            f"({'the zlib stream ends' if ended else 'truncated'}); the missing rows would come out black"
        )


def open_image(
    path: Path,
    color_mode: str | None = None,
    draft_size: tuple[int, int] | None = None,
    *,
    data: bytes | None = None,
    from_pack: bool = False,
) -> Image.Image:
    """Fully decode ``path`` with EXIF orientation applied; raise CorruptImageError naming it.
    With ``data``, decode these bytes (``path``'s content, read elsewhere: a Ray worker gets the
    bytes, not the file) exactly as the file would be; ``path`` then only names them in messages.

    With ``draft_size``, a JPEG is decoded by DCT scaling straight to the smallest power-of-two
    reduction still at least twice that size (either orientation), much faster than a full
    decode and indistinguishable after the final downscale. Pillow's decompression-bomb limit
    stays in force: a bomb is reported like a corrupt file. A PNG whose image data stops before
    its last row is refused (see ``check_png_rows``), unless ``from_pack``: ``data`` is an item
    of a pack, read against its sha256, which ingest checked so (``check_image``) or a stage wrote,
    and inflating it a second time cost a fifth of resize's time.
    """
    try:
        if data is None:
            with Image.open(path) as image:  # closing the file destroys the image: keep a copy
                return _decoded(image, path, None, color_mode, draft_size, from_pack, detach=True)
        # bytes in memory: nothing to close, so the decoded image itself is returned
        return _decoded(Image.open(io.BytesIO(data)), path, data, color_mode, draft_size, from_pack, detach=False)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(f"{path}: cannot decode image ({exc})", [str(path)]) from exc


def _decoded(image, path, data, color_mode, draft_size, from_pack: bool, detach: bool) -> Image.Image:
    if draft_size is not None and image.format == "JPEG":
        side = 2 * max(draft_size)
        image.draft(image.mode, (side, side))
    image.load()
    if image.format == "PNG" and not from_pack:
        check_png_rows(Path(path).read_bytes() if data is None else data)
    if image.getexif().get(EXIF_ORIENTATION, 1) in _TRANSPOSED:
        image = ImageOps.exif_transpose(image)
    elif detach:
        image = image.copy()
    return convert(image, color_mode) if color_mode else image


EXIF_ORIENTATION = 0x0112
_TRANSPOSED = range(2, 9)  # the orientations exif_transpose turns or flips


def check_image(path: Path, data: bytes) -> tuple[int, int, str]:
    """Check that ``data``, the bytes of ``path``, is an intact image; return its (width, height,
    mode) as ``open_image`` shows it (EXIF orientation applied). Raise CorruptImageError naming ``path``.

    Cheaper than decoding for the common formats, which is why ingest uses it: a PNG's every chunk
    is checked against its CRC (a truncated or altered file fails) and its image data inflated (not
    unfiltered) to check that it holds every row, a JPEG
    is decoded at its smallest DCT scale (the whole entropy-coded stream is still read), any other
    format is decoded in full. Pillow's decompression-bomb limit applies as in ``open_image``.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height, mode = image.width, image.height, image.mode
            exif = Image.Exif()
            if image.format == "PNG":
                # known without decoding only when the eXIf chunk precedes the pixels, as it should
                exif.load(image.info.get("exif", b""))
                try:
                    image.verify()
                except (OSError, EOFError) as exc:
                    raise OSError(f"truncated PNG file ({exc})") from exc
                check_png_rows(data)
            elif image.format == "JPEG":
                exif = image.getexif()  # from its APP1 segment, read at open
                image.draft(image.mode, (1, 1))
                image.load()
            else:  # rarer formats: decoded in full from the file by open_image itself (Pillow orients
                # some, e.g. TIFF, differently when reading a file or a buffer)
                shown = open_image(path)
                width, height, mode = shown.width, shown.height, shown.mode
            if exif.get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # a quarter turn: displayed on its side
                width, height = height, width
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(f"{path}: cannot decode image ({exc})", [str(path)]) from exc
    return width, height, mode


def load_array(
    path: Path,
    color_mode: str,
    size: tuple[int, int] | None = None,
    resample: str = "lanczos",
    *,
    data=None,
    from_pack: bool = False,
) -> np.ndarray:
    """Decode ``path`` (or its bytes ``data``, see ``open_image``) to a uint8 array (H, W) for gray
    or (H, W, 3) for rgb, optionally resized to ``size`` = (width, height)."""
    image = open_image(path, color_mode, draft_size=size, data=data, from_pack=from_pack)
    if size is not None and image.size != tuple(size):
        image = image.resize(tuple(size), resample_filter(resample))
    return np.asarray(image, dtype=np.uint8)


# augmentation op name -> array transform; each is a symmetry of the square, so labels are unchanged
OPS = {
    "rot90": lambda a: np.rot90(a, 1),
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3),
    "flip_lr": lambda a: a[:, ::-1],
    "flip_tb": lambda a: a[::-1],
    "transpose": lambda a: np.swapaxes(a, 0, 1),
    "transverse": lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),
}
SHAPE_CHANGING_OPS = frozenset({"rot90", "rot270", "transpose", "transverse"})
# bytes an augmented copy's name may add to its source's: "__", the longest op, "~NNN" (see
# protocols._copy_name); resize keeps room for them so that augment never meets a too-long name
COPY_NAME_RESERVE = 2 + max(len(op) for op in OPS) + 4


def apply_op(array: np.ndarray, op: str) -> np.ndarray:
    return np.ascontiguousarray(OPS[op](array))


def check_ops(ops: list[str], square: bool = True) -> None:
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ParamError(f"unknown augment op(s) {unknown}; use any of {', '.join(OPS)}.")
    if len(set(ops)) != len(ops):
        raise ParamError(f"augment ops {ops} repeat an op; each op may appear once.")
    if not square and SHAPE_CHANGING_OPS & set(ops):
        raise ParamError(
            f"ops {sorted(SHAPE_CHANGING_OPS & set(ops))} change the shape of non-square images; "
            "use rot180/flip_lr/flip_tb or resize to a square."
        )
