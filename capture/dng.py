"""DNG read and write, burst loading, and a folder of DNGs played as a stream.

rawpy (LibRaw) decodes the pixels, the CFA pattern and the levels, whatever the compression; tifffile
reads the DNG tags LibRaw does not expose (noise profile, opcode lists, colour matrices, neutral)
and writes our files. In a DNG the raw image is the IFD with NewSubFileType 0, often a SubIFD
behind a preview in IFD0, so tags are looked up in the raw IFD first, then IFD0, then Exif.

    read_dng(path) -> Frame                     BAYER16 for CFA files, RGB16 for LinearRaw (ProRAW)
    write_dng(path, frame, bits=None) -> Path   uncompressed 16-bit DNG 1.4, written atomically
    load_burst(paths_or_glob) -> BurstLoad      corrupt files reported and skipped
    DngBurstSource(pattern, fps, paced, loop)   a Source for the capture worker
"""
from __future__ import annotations

import dataclasses
import glob
import io
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import rawpy
import tifffile

from capture.atomic import atomic_write_bytes
from capture.clock import SYSTEM_CLOCK, Clock
from capture.errors import CaptureError, FrameDecodeError, SourceEnded, SourceInvalid
from capture.frame import CFA_PATTERNS, Frame, PixelFormat, RawMeta
from capture.source import Source, SourceInfo

# TIFF / DNG tag codes (DNG specification 1.4) and the TIFF field types we write.
BITS_PER_SAMPLE, ORIENTATION = 258, 274
EXPOSURE_TIME, ISO_SPEED, EXIF_IFD = 33434, 34855, 34665
CFA_REPEAT_DIM, CFA_PATTERN, CFA_PLANE_COLOR, CFA_LAYOUT = 33421, 33422, 50710, 50711
DNG_VERSION, DNG_BACKWARD_VERSION, UNIQUE_CAMERA_MODEL = 50706, 50707, 50708
LINEARIZATION_TABLE, BLACK_REPEAT_DIM, BLACK_LEVEL = 50712, 50713, 50714
BLACK_DELTA_H, BLACK_DELTA_V, WHITE_LEVEL = 50715, 50716, 50717
COLOR_MATRIX = {1: 50721, 2: 50722}
CALIBRATION_ILLUMINANT = {1: 50778, 2: 50779}
AS_SHOT_NEUTRAL, NOISE_PROFILE = 50728, 51041
OPCODE_LIST = {1: 51008, 2: 51009, 3: 51022}
PHOTOMETRIC_CFA, PHOTOMETRIC_LINEAR_RAW = 32803, 34892
_BYTE, _ASCII, _SHORT, _LONG, _RATIONAL, _UNDEFINED, _SRATIONAL, _DOUBLE = 1, 2, 3, 4, 5, 7, 10, 12
_D65 = 21  # EXIF LightSource code
_CFA_CODES = {"R": 0, "G": 1, "B": 2}  # CFAPattern bytes index CFAPlaneColor (0, 1, 2) = R, G, B
_MIN_SIDE = 22  # LibRaw refuses images narrower or shorter than this, so we refuse to write them


class DngError(FrameDecodeError):
    """A DNG could not be read: the message names the file and says what was wrong."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class BurstMismatch(CaptureError):
    """Frames of one burst differ in size, CFA pattern or pixel format from the first good frame."""

    def __init__(self, reference: Path, differences: list[tuple[Path, str]]):
        self.reference = reference
        self.differences = differences
        listed = "; ".join(f"{p.name}: {why}" for p, why in differences)
        super().__init__(
            f"burst frames differ from the reference frame {reference}: {listed}. Keep one camera mode per "
            f"burst folder, or pass on_mismatch='exclude' to skip the odd frames."
        )


# -- reading -------------------------------------------------------------------------------------


def read_dng(path: str | os.PathLike, *, seq: int = 0) -> Frame:
    """Decode one DNG into a Frame with its RawMeta.

    Bayer CFA files (any 2x2 RGB pattern) -> PixelFormat.BAYER16, pixels (H, W) uint16, the active
    area as LibRaw's raw_image_visible (DefaultCrop is not applied). LinearRaw files (iPhone ProRAW)
    -> PixelFormat.RGB16, (H, W, 3) uint16. Values are as stored after any LinearizationTable: black
    and white levels in RawMeta refer to them. Raises DngError naming the file for anything that is
    not a readable RGB DNG (garbage, truncation, X-Trans or monochrome data).
    """
    path = Path(path)
    if not path.is_file():
        raise DngError(path, "no such file; check the path")
    try:
        tags = _read_tags(path)
    except DngError:
        raise
    except Exception as exc:  # tifffile raises many types for a broken structure; all mean "corrupt"
        raise DngError(path, f"not a TIFF/DNG file, or its structure is corrupt ({type(exc).__name__}: {exc})") from exc
    try:
        with rawpy.imread(str(path)) as raw:
            pixels, cfa, lr_black, lr_white, lr_wb = _decode(raw, tags.linear_raw)
    except (rawpy.LibRawError, OSError) as exc:
        raise DngError(path, f"LibRaw could not decode the image data ({type(exc).__name__}: {exc}); the file "
                             f"is probably truncated or corrupt") from exc
    except ValueError as exc:  # _decode: a layout we do not support
        raise DngError(path, str(exc)) from exc
    fmt = PixelFormat.RGB16 if tags.linear_raw else PixelFormat.BAYER16
    if tags.linear_raw != (pixels.ndim == 3):
        raise DngError(path, f"the raw IFD says photometric {tags.photometric} but LibRaw decoded shape {pixels.shape}")
    if fmt is PixelFormat.BAYER16 and (pixels.shape[0] % 2 or pixels.shape[1] % 2):
        # Frames hold whole 2x2 CFA cells; dropping the last row/column keeps the pattern's origin.
        pixels = pixels[: pixels.shape[0] // 2 * 2, : pixels.shape[1] // 2 * 2].copy()
    try:
        meta = _raw_meta(tags, cfa, lr_black, lr_white, lr_wb)
    except ValueError as exc:  # RawMeta refuses inconsistent levels
        raise DngError(path, f"inconsistent metadata: {exc}") from exc
    return Frame(pixels, seq, time.monotonic_ns(), f"dng:{path.name}", fmt, raw=meta)


@dataclass(frozen=True)
class _Tag:
    value: object
    dtype: int  # TIFF field type: 5 RATIONAL and 10 SRATIONAL come back as flat (num, den) pairs


@dataclass(frozen=True)
class _DngTags:
    """The tags we need: from the raw IFD, then IFD0, then the Exif IFD (by name)."""

    photometric: int
    raw: dict[int, _Tag]
    ifd0: dict[int, _Tag]
    exif: dict[str, object]

    @property
    def linear_raw(self) -> bool:
        return self.photometric == PHOTOMETRIC_LINEAR_RAW

    def numbers(self, code: int, exif_name: str | None = None, raw_only: bool = False) -> tuple[float, ...] | None:
        for ifd in (self.raw,) if raw_only else (self.raw, self.ifd0):
            if code in ifd:
                return _numbers(ifd[code].value, ifd[code].dtype in (_RATIONAL, _SRATIONAL))
        if exif_name is not None and exif_name in self.exif:
            return _numbers(self.exif[exif_name], rational=code == EXPOSURE_TIME)  # Exif values come untyped
        return None

    def data(self, code: int) -> bytes | None:
        for ifd in (self.raw, self.ifd0):
            if code in ifd and isinstance(ifd[code].value, bytes):
                return ifd[code].value
        return None


def _numbers(value, rational: bool) -> tuple[float, ...] | None:
    """A tifffile tag value -> floats."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        values: tuple = (value,)
    else:
        values = tuple(np.asarray(value).ravel().tolist())
    if rational:
        if len(values) % 2:
            return None
        return tuple(n / d if d else 0.0 for n, d in zip(values[0::2], values[1::2]))
    return tuple(float(v) for v in values)


def _read_tags(path: Path) -> _DngTags:
    size = path.stat().st_size
    with tifffile.TiffFile(path) as tif:
        ifd0 = tif.pages.first
        if DNG_VERSION not in ifd0.tags:
            raise DngError(path, "a TIFF but not a DNG (no DNGVersion tag); convert it with Adobe DNG Converter")
        raw = _find_raw_ifd(list(tif.pages))
        if raw is None:
            raise DngError(path, "no raw image in it (no IFD with NewSubFileType 0 and a CFA or LinearRaw photometric)")
        ends = [o + n for o, n in zip(raw.dataoffsets, raw.databytecounts)]
        if not ends or max(ends) > size:
            raise DngError(path, f"truncated: its image data ends at byte {max(ends, default=0)} but the file "
                                 f"has {size} bytes; copy it again from the camera")
        exif = ifd0.tags.get(EXIF_IFD)
        # Read every value while the file is open: tifffile may load large values lazily.
        return _DngTags(
            photometric=int(raw.photometric),
            raw={t.code: _Tag(t.value, int(t.dtype)) for t in raw.tags.values()},
            ifd0={t.code: _Tag(t.value, int(t.dtype)) for t in ifd0.tags.values()},
            exif=dict(exif.value) if exif is not None and isinstance(exif.value, dict) else {},
        )


def _find_raw_ifd(pages, depth: int = 0):
    """Depth-first over IFDs and their SubIFDs: the first full-resolution CFA/LinearRaw image."""
    for page in pages:
        if int(page.subfiletype) == 0 and int(page.photometric) in (PHOTOMETRIC_CFA, PHOTOMETRIC_LINEAR_RAW):
            return page
        subs = page.pages if depth < 3 else None
        if subs is not None and len(subs):
            found = _find_raw_ifd(list(subs), depth + 1)
            if found is not None:
                return found
    return None


def _decode(raw, linear_raw: bool):
    """LibRaw's view: pixels, CFA name, black levels (per CFA position or sample), white level, camera WB."""
    if linear_raw:
        vis = raw.raw_image_visible
        if vis.ndim != 3 or vis.shape[2] < 3:
            raise ValueError(f"LinearRaw data decoded as shape {vis.shape}, not RGB (monochrome is not supported)")
        pixels = np.ascontiguousarray(vis[..., :3], dtype=np.uint16)
        black = tuple(float(b) for b in raw.black_level_per_channel[:3])
        cfa = "RGGB"  # RawMeta needs a valid name; it means nothing for demosaiced data
    else:
        pattern = raw.raw_pattern
        if pattern is None or pattern.shape != (2, 2):
            shape = None if pattern is None else pattern.shape
            raise ValueError(f"CFA repeat pattern {shape} is not 2x2 (X-Trans and other mosaics are not supported)")
        desc = raw.color_desc.decode("ascii", "replace")
        cfa = "".join(desc[i] for i in pattern.flat)
        if cfa not in CFA_PATTERNS:
            raise ValueError(f"CFA pattern {cfa!r} is not one of {CFA_PATTERNS}")
        per_colour = raw.black_level_per_channel  # LibRaw indexes levels by colour (R G B G2), not position
        black = tuple(float(per_colour[i]) for i in pattern.flat)
        pixels = np.array(raw.raw_image_visible, dtype=np.uint16, copy=True)
    return pixels, cfa, black, int(raw.white_level), tuple(float(w) for w in raw.camera_whitebalance)


def _raw_meta(tags: _DngTags, cfa: str, lr_black, lr_white: int, lr_wb) -> RawMeta:
    black = _tag_black_levels(tags, 3 if tags.linear_raw else 4) or lr_black
    white_tag = tags.numbers(WHITE_LEVEL, raw_only=True)
    white = int(white_tag[0]) if white_tag else lr_white
    bits_tag = tags.numbers(BITS_PER_SAMPLE, raw_only=True)
    linearized = LINEARIZATION_TABLE in tags.raw
    container = 16 if linearized or not bits_tag else int(bits_tag[0])
    exposure = tags.numbers(EXPOSURE_TIME, "ExposureTime")
    iso = tags.numbers(ISO_SPEED, "ISOSpeedRatings")
    return RawMeta(
        black_level=black,
        white_level=white,
        cfa_pattern=cfa,
        as_shot_neutral=_neutral(tags, lr_wb),
        color_matrix=_color_matrix(tags),
        noise_profile=_noise_profile(tags),
        opcodes={n: data for n, code in OPCODE_LIST.items() if (data := tags.data(code)) is not None},
        exposure_time_s=exposure[0] if exposure else None,
        iso=iso[0] if iso else None,
        # Significant bits: a 12-bit sensor in a 16-bit container has white level 4095.
        bits_per_sample=max(1, min(container, white.bit_length())),
    )


def _tag_black_levels(tags: _DngTags, n: int) -> tuple[float, ...] | None:
    """Exact (possibly fractional) black levels from the raw IFD, per CFA position or sample.

    None for layouts we do not map (per-row/column deltas, repeats other than 1x1 or 2x2); the
    caller then uses LibRaw's integer levels.
    """
    if BLACK_DELTA_H in tags.raw or BLACK_DELTA_V in tags.raw:
        return None
    values = tags.numbers(BLACK_LEVEL, raw_only=True)
    dims = tags.numbers(BLACK_REPEAT_DIM, raw_only=True) or (1.0, 1.0)
    if not values:
        return None
    if dims == (1.0, 1.0) and len(values) == 1:
        return values * n
    if dims == (1.0, 1.0) and len(values) == n == 3:
        return values
    if dims == (2.0, 2.0) and len(values) == n == 4:
        return values
    return None


def _neutral(tags: _DngTags, camera_wb) -> tuple[float, float, float]:
    values = tags.numbers(AS_SHOT_NEUTRAL)
    if values and len(values) >= 3 and all(v > 0 for v in values[:3]):
        return tuple(values[:3])
    wb = camera_wb[:3]
    if all(w > 0 for w in wb):  # LibRaw's as-shot multipliers are the inverse of the neutral
        return (wb[1] / wb[0], 1.0, wb[1] / wb[2])
    return (1.0, 1.0, 1.0)


def _color_matrix(tags: _DngTags) -> np.ndarray | None:
    """XYZ -> camera (3, 3): the D65 calibration if there is one, else ColorMatrix2, else 1."""
    found = {}
    for n in (1, 2):
        values = tags.numbers(COLOR_MATRIX[n])
        if values and len(values) == 9:
            illuminant = tags.numbers(CALIBRATION_ILLUMINANT[n])
            found[n] = (np.array(values, np.float64).reshape(3, 3), illuminant[0] if illuminant else None)
    for m, illuminant in found.values():
        if illuminant == _D65:
            return m
    for n in (2, 1):
        if n in found:
            return found[n][0]
    return None


def _noise_profile(tags: _DngTags) -> tuple[tuple[float, float], ...] | None:
    values = tags.numbers(NOISE_PROFILE)
    if not values or len(values) % 2:
        return None
    return tuple((values[i], values[i + 1]) for i in range(0, len(values), 2))


# -- writing -------------------------------------------------------------------------------------


def write_dng(path: str | os.PathLike, frame: Frame, bits: int | None = None) -> Path:
    """Write a BAYER16 (or RGB16) frame and its RawMeta as an uncompressed DNG 1.4; returns `path`.

    The whole file is encoded in memory and then renamed into place (capture.atomic), so a crash
    or a full disk leaves nothing under `path` and an existing file there untouched.
    bits: the sensor's significant bits, e.g. 12. Samples are always stored in 16 bits
        (BitsPerSample 16); when given, every sample and the white level must fit in `bits`, which
        catches data scaled for the wrong bit depth before it is saved.
    Raises ValueError naming `path` for a frame that cannot be written, OSError from the disk.
    """
    path = Path(path)
    try:
        data = dng_bytes(frame, bits)
    except ValueError as exc:
        raise ValueError(f"cannot write {path}: {exc}") from exc
    atomic_write_bytes(path, data)
    return path


def dng_bytes(frame: Frame, bits: int | None = None) -> bytes:
    """The DNG file write_dng would write, as bytes (see write_dng). Raises ValueError."""
    if frame.pixel_format not in (PixelFormat.BAYER16, PixelFormat.RGB16):
        raise ValueError(f"DNG holds RAW frames (BAYER16 or RGB16); this frame is {frame.pixel_format.value}. "
                         f"Save it as PNG instead")
    raw = frame.raw
    h, w = frame.height, frame.width
    if min(h, w) < _MIN_SIDE:
        raise ValueError(f"{w}x{h} is smaller than the {_MIN_SIDE} px LibRaw (and so read_dng) needs on each side")
    if bits is not None:
        if not 1 <= bits <= 16:
            raise ValueError(f"bits={bits} must be between 1 and 16")
        top = int(frame.pixels.max()) if frame.pixels.size else 0
        if top >= 1 << bits or raw.white_level >= 1 << bits:
            raise ValueError(f"samples go up to {top} and the white level is {raw.white_level}, which do not fit "
                             f"in bits={bits} (max {(1 << bits) - 1}); pass the right bit depth or rescale the data")
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf, byteorder="<") as tif:
        tif.write(
            np.ascontiguousarray(frame.pixels),
            photometric=PHOTOMETRIC_CFA if frame.pixel_format is PixelFormat.BAYER16 else PHOTOMETRIC_LINEAR_RAW,
            planarconfig="contig" if frame.pixel_format is PixelFormat.RGB16 else None,
            subfiletype=0,  # this IFD is the full-resolution raw image; no preview IFD
            software="EyeFuse",
            metadata=None,
            extratags=_dng_tags(frame.pixel_format, raw),
        )
    return buf.getvalue()


def _dng_tags(fmt: PixelFormat, raw: RawMeta) -> list[tuple]:
    """tifffile extratags (code, type, count, value, writeonce) for the DNG tags of one raw IFD."""
    bayer = fmt is PixelFormat.BAYER16
    samples = 1 if bayer else 3
    tags: list[tuple] = [
        (ORIENTATION, _SHORT, 1, 1, True),
        (DNG_VERSION, _BYTE, 4, (1, 4, 0, 0), True),
        # Readers older than DNG 1.3 would ignore opcode lists and render lens corrections wrong.
        (DNG_BACKWARD_VERSION, _BYTE, 4, (1, 3, 0, 0) if raw.opcodes else (1, 1, 0, 0), True),
        (UNIQUE_CAMERA_MODEL, _ASCII, None, "EyeFuse", True),
    ]
    if bayer:
        tags += [
            (CFA_REPEAT_DIM, _SHORT, 2, (2, 2), True),
            (CFA_PATTERN, _BYTE, 4, tuple(_CFA_CODES[c] for c in raw.cfa_pattern), True),
            (CFA_PLANE_COLOR, _BYTE, 3, (0, 1, 2), True),
            (CFA_LAYOUT, _SHORT, 1, 1, True),
        ]
    black = _black_for_writing(raw.black_level, 4 if bayer else 3)
    tags.append((BLACK_REPEAT_DIM, _SHORT, 2, (2, 2) if bayer else (1, 1), True))
    if all(float(b).is_integer() for b in black):
        tags.append((BLACK_LEVEL, _LONG, len(black), tuple(int(b) for b in black), True))
    else:
        tags.append((BLACK_LEVEL, _RATIONAL, len(black), _rationals(black, signed=False), True))
    tags.append((WHITE_LEVEL, _LONG, samples, (int(raw.white_level),) * samples, True))
    if raw.color_matrix is not None:
        m = np.asarray(raw.color_matrix, np.float64)
        if m.shape != (3, 3) or not np.isfinite(m).all():
            raise ValueError(f"color_matrix must be a finite (3, 3) XYZ -> camera matrix, got shape {m.shape}")
        tags.append((COLOR_MATRIX[1], _SRATIONAL, 9, _rationals(m.ravel(), signed=True), True))
        # We keep one matrix; the unprocessing matrices we use are daylight ones.
        tags.append((CALIBRATION_ILLUMINANT[1], _SHORT, 1, _D65, True))
    neutral = tuple(float(v) for v in raw.as_shot_neutral)
    if len(neutral) != 3 or not all(v > 0 and math.isfinite(v) for v in neutral):
        raise ValueError(f"as_shot_neutral must be 3 positive numbers, got {raw.as_shot_neutral}")
    tags.append((AS_SHOT_NEUTRAL, _RATIONAL, 3, _rationals(neutral, signed=False), True))
    if raw.noise_profile is not None:
        pairs = [tuple(float(v) for v in p) for p in raw.noise_profile]
        if len(pairs) not in (1, 3) or any(len(p) != 2 for p in pairs):
            raise ValueError(f"noise_profile must be 1 or 3 (scale, offset) pairs (one per colour plane, as DNG "
                             f"stores it), got {raw.noise_profile}")
        flat = tuple(v for p in pairs for v in p)
        tags.append((NOISE_PROFILE, _DOUBLE, len(flat), flat, True))
    for n, data in sorted(raw.opcodes.items()):
        if n not in OPCODE_LIST:
            raise ValueError(f"opcode lists are numbered 1, 2, 3; got {n}")
        if data:
            tags.append((OPCODE_LIST[n], _UNDEFINED, len(data), bytes(data), True))
    if raw.exposure_time_s is not None:
        if not raw.exposure_time_s > 0:
            raise ValueError(f"exposure_time_s must be positive, got {raw.exposure_time_s}")
        tags.append((EXPOSURE_TIME, _RATIONAL, 1, _rationals([raw.exposure_time_s], signed=False), True))
    if raw.iso is not None:
        tags.append((ISO_SPEED, _SHORT, 1, int(min(max(round(raw.iso), 1), 65535)), True))
    return tags


def _black_for_writing(black: Sequence[float], n: int) -> tuple[float, ...]:
    black = tuple(float(b) for b in black)
    if len(black) == 1:
        black *= n
    if len(black) != n:
        raise ValueError(f"black_level needs 1 or {n} values for this frame, got {len(black)}: {black}")
    if any(b < 0 or not math.isfinite(b) for b in black):
        raise ValueError(f"black levels must be finite and >= 0, got {black}")
    return black


def _rationals(values, signed: bool) -> tuple[int, ...]:
    """Floats -> flat (num, den, ...) for TIFF (S)RATIONAL, as close as 32-bit terms allow."""
    limit = 2**31 - 1 if signed else 2**32 - 1
    out: list[int] = []
    for v in values:
        v = float(v)
        if not math.isfinite(v) or abs(v) > limit:
            raise ValueError(f"{v} cannot be stored as a TIFF rational")
        # The largest denominator that keeps the numerator in range: decimal values round-trip exactly.
        f = Fraction(v).limit_denominator(max(1, min(limit, int(limit / max(abs(v), 1.0)))))
        out += [f.numerator, f.denominator]
    return tuple(out)


# -- bursts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkippedFile:
    """A file load_burst did not use, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class BurstLoad:
    """What load_burst got: good frames (with the file each came from) and the files it skipped
    (`errors`: unreadable and mismatched; `mismatched`: those of them that differ from the
    reference frame)."""

    frames: list[Frame]
    paths: list[Path]
    errors: list[SkippedFile] = field(default_factory=list)
    mismatched: list[SkippedFile] = field(default_factory=list)
    reference: int = 0  # the reference frame's index in `frames`


def natural_key(path: str | os.PathLike) -> tuple:
    """Sort key that orders frame_2 before frame_10."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path)))


def find_dngs(pattern: str | os.PathLike) -> list[Path]:
    """A folder (its *.dng, any case), a glob, or one file -> paths in natural order."""
    text = str(pattern)
    p = Path(text)
    if p.is_dir():
        found = [q for q in p.iterdir() if q.suffix.lower() == ".dng" and q.is_file()]
    elif glob.has_magic(text):
        found = [Path(q) for q in glob.glob(text) if Path(q).is_file()]
    else:
        found = [p] if p.is_file() else []
    return sorted(found, key=natural_key)


def load_burst(
    paths_or_glob: str | os.PathLike | Sequence[str | os.PathLike], on_mismatch: str = "raise",
    reference: str | int = "first",
) -> BurstLoad:
    """Read a burst of DNGs: a folder, a glob (sorted naturally), or a list of paths (kept in order).

    Corrupt or truncated files are skipped and listed in `errors` with the reason; the others load.
    Frames whose size, pixel format or CFA pattern differ from the reference frame (`reference`:
    "first", "newest", or an index into the files given, counting unreadable ones too) raise
    BurstMismatch naming every odd file (on_mismatch="raise"), or are skipped and listed in `errors`
    (on_mismatch="exclude"). Raises FileNotFoundError when nothing matches, and ValueError for a
    reference index outside the files or on an unreadable one.
    """
    if on_mismatch not in ("raise", "exclude"):
        raise ValueError(f"on_mismatch must be 'raise' or 'exclude', got {on_mismatch!r}")
    if isinstance(paths_or_glob, (str, os.PathLike)):
        paths = find_dngs(paths_or_glob)
        what = repr(str(paths_or_glob))
    else:
        paths = [Path(p) for p in paths_or_glob]
        what = f"the {len(paths)} paths given"
    if not paths:
        raise FileNotFoundError(f"no DNG files match {what}; give a folder of .dng files, a glob such as "
                                f"'burst/*.dng', or a list of paths")
    read: list[tuple[Path, Frame]] = []
    errors: list[SkippedFile] = []
    for path in paths:
        try:
            read.append((path, read_dng(path)))
        except DngError as exc:
            errors.append(SkippedFile(path, exc.reason))
    if not read:
        return BurstLoad([], [], errors)
    if reference == "first":
        ref_path, ref = read[0]
    elif reference == "newest":
        ref_path, ref = read[-1]
    else:
        if not -len(paths) <= int(reference) < len(paths):
            raise ValueError(f"reference frame {reference} is outside the {len(paths)} files (0..{len(paths) - 1})")
        ref_path = paths[int(reference)]
        found = [f for p, f in read if p == ref_path]
        if not found:
            raise ValueError(f"the reference frame {ref_path} could not be read; choose another --reference")
        ref = found[0]
    frames: list[Frame] = []
    used: list[Path] = []
    odd: list[tuple[Path, str]] = []
    mismatched: list[SkippedFile] = []
    for path, frame in read:
        why = _difference(frame, ref)
        if why:
            odd.append((path, why))
            mismatched.append(SkippedFile(path, f"{why} (reference frame: {ref_path.name})"))
            continue
        frames.append(dataclasses.replace(frame, seq=len(frames)))
        used.append(path)
    if odd and on_mismatch == "raise":
        raise BurstMismatch(ref_path, odd)
    return BurstLoad(frames, used, errors + mismatched, mismatched, used.index(ref_path))


def _difference(frame: Frame, ref: Frame) -> str | None:
    """What makes `frame` unusable in a burst with `ref`, in words; None when they match."""
    diffs = []
    if frame.pixel_format is not ref.pixel_format:
        diffs.append(f"pixel format {frame.pixel_format.value} vs {ref.pixel_format.value}")
    if frame.pixels.shape[:2] != ref.pixels.shape[:2]:
        diffs.append(f"size {frame.width}x{frame.height} vs {ref.width}x{ref.height}")
    if frame.pixel_format is PixelFormat.BAYER16 and ref.pixel_format is PixelFormat.BAYER16 \
            and frame.raw.cfa_pattern != ref.raw.cfa_pattern:
        diffs.append(f"CFA pattern {frame.raw.cfa_pattern} vs {ref.raw.cfa_pattern}")
    return ", ".join(diffs) or None


# -- streaming -----------------------------------------------------------------------------------


class DngBurstSource(Source):
    """A folder or glob of DNGs played as a camera stream, file by file in natural order.

    A corrupt file, or one whose size/format/pattern differs from the first frame, raises
    FrameDecodeError (the worker skips and counts it). Paced at `fps` unless paced=False; the end
    raises SourceEnded unless loop=True. Every frame gets a fresh seq and t_capture_ns, both read
    from `clock` (what it paces by; tests pass a FakeClock).
    """

    def __init__(self, pattern: str | os.PathLike, fps: float = 30.0, paced: bool = True, loop: bool = False,
                 clock: Clock = SYSTEM_CLOCK):
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.clock = clock
        self.pattern = str(pattern)
        self.fps = float(fps)
        self.paced = paced
        self.loop = loop
        self._paths: list[Path] = []
        self._index = 0
        self._seq = 0
        self._good_this_pass = 0
        self._next_due: float | None = None
        self._ref: tuple[Path, Frame] | None = None
        self._size: tuple[int, int, PixelFormat] | None = None

    def open(self) -> None:
        paths = find_dngs(self.pattern)
        if not paths:
            raise SourceInvalid(f"no DNG files match {self.pattern!r}; give a folder of .dng files or a glob "
                                f"such as 'burst/*.dng'")
        self._paths, self._index, self._seq, self._good_this_pass = paths, 0, 0, 0
        self._next_due, self._ref = None, None
        self._size = self._size or _peek_size(paths[0])

    def read(self) -> Frame:
        if not self._paths:
            raise SourceInvalid(f"DNG source {self.pattern!r} is not open; call open() first")
        if self._index >= len(self._paths):
            if not self.loop:
                raise SourceEnded(f"DNG burst {self.pattern!r} ended after {self._seq} frames")
            if not self._good_this_pass:
                raise SourceInvalid(f"none of the {len(self._paths)} files matching {self.pattern!r} decode")
            self._index, self._good_this_pass = 0, 0
        path = self._paths[self._index]
        self._index += 1
        frame = read_dng(path)  # DngError is a FrameDecodeError: the worker skips and counts it
        if self._ref is None:
            self._ref = (path, frame)
            self._size = (frame.width, frame.height, frame.pixel_format)
        elif why := _difference(frame, self._ref[1]):
            raise FrameDecodeError(f"{path}: {why} (first frame: {self._ref[0].name}); skipped")
        if self.paced:
            self._wait_for_slot()
        frame = dataclasses.replace(frame, seq=self._seq, t_capture_ns=self.clock.monotonic_ns(), source=self._name())
        self._seq += 1
        self._good_this_pass += 1
        return frame

    def _wait_for_slot(self) -> None:
        period = 1.0 / self.fps
        now = self.clock.monotonic()
        if self._next_due is None or now - self._next_due > period:
            self._next_due = now  # first frame, or decoding fell behind: don't burst to catch up
        elif self._next_due > now:
            self.clock.sleep(self._next_due - now)
        self._next_due += period

    def close(self) -> None:
        self._paths = []
        self._ref = None

    def _name(self) -> str:
        return f"dng:{self.pattern}"

    def describe(self) -> SourceInfo:
        w, h, fmt = self._size or (0, 0, PixelFormat.BAYER16)
        n = len(self._paths)
        return SourceInfo(
            name=self._name(), kind="dng", width=w, height=h, fps=self.fps, pixel_format=fmt,
            detail=f"{n} DNG files" if n else self.pattern,
        )


def _peek_size(path: Path) -> tuple[int, int, PixelFormat] | None:
    """(width, height, format) from the raw IFD's header, without decoding; None if unreadable."""
    try:
        with tifffile.TiffFile(path) as tif:
            raw = _find_raw_ifd(list(tif.pages))
            if raw is None:
                return None
            linear = int(raw.photometric) == PHOTOMETRIC_LINEAR_RAW
            return int(raw.imagewidth), int(raw.imagelength), PixelFormat.RGB16 if linear else PixelFormat.BAYER16
    except Exception:  # only a hint for describe(); read() reports the real error
        return None
