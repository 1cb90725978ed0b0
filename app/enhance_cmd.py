"""`eyefuse enhance IN -o OUT`: run an image, a folder of images or a video through a processor.

The same Processor.process the live engine calls, on every frame (offline nothing is skipped).
Videos keep their frame count and frame rate (decoded and encoded with PyAV; OpenCV when PyAV is
missing). Outputs are written under a temporary name next to OUT and renamed when complete, so a
failure part-way never leaves a truncated file under OUT; the input is never overwritten.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from capture.atomic import atomic_output as shared_atomic_output
from capture.frame import Frame, PixelFormat
from engine.manifest import WEIGHTS_DIR, WeightsError
from engine.processor import ProcessingError, Processor, Result

try:
    import av
except ImportError:  # PyAV is a dependency, but OpenCV alone can still do the job
    av = None

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
# output container -> encoders to try, best first (H.264 where the container takes it)
VIDEO_CODECS = {
    ".mp4": ["libx264", "h264", "mpeg4", "mjpeg"],
    ".mov": ["libx264", "h264", "mpeg4", "mjpeg"],
    ".m4v": ["libx264", "h264", "mpeg4"],
    ".mkv": ["libx264", "h264", "mpeg4", "mjpeg"],
    ".avi": ["mpeg4", "mjpeg", "libx264"],
    ".webm": ["libvpx-vp9", "libvpx"],
}
_CV2_FOURCC = {".mp4": "mp4v", ".mov": "mp4v", ".m4v": "mp4v", ".mkv": "MJPG", ".avi": "MJPG"}
DEFAULT_FPS = Fraction(30)


class EnhanceError(Exception):
    """The job cannot be done as asked; the message names the file and says what to do."""


@dataclass
class EnhanceSummary:
    output: Path
    frames: int = 0
    fps: Fraction | None = None
    codec: str | None = None
    size: tuple[int, int] | None = None  # output (width, height)
    seconds: float = 0.0
    stages: dict[str, list[float]] = field(default_factory=dict)  # stage -> ms per frame
    failed: list[str] = field(default_factory=list)  # folder mode: files that could not be done, with why
    skipped: list[str] = field(default_factory=list)  # folder mode: files that are not images we read
    sizes: collections.Counter = field(default_factory=collections.Counter)  # output (w, h) -> frames
    partial: str | None = None  # a video written with --allow-partial from a truncated input: what it holds

    def add(self, result: Result) -> None:
        self.frames += 1
        self.size = (result.output.shape[1], result.output.shape[0])
        self.sizes[self.size] += 1
        for name, ms in result.stages.items():
            self.stages.setdefault(name, []).append(ms)

    def describe(self) -> str:
        unit = "image" if self.fps is None and (self.failed or self.skipped or len(self.sizes) > 1) else "frame"
        parts = [f"wrote {self.output}: {self.frames} {unit}{'s' * (self.frames != 1)}"]
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped (not images: {', '.join(self.skipped[:3])}"
                         f"{' ...' if len(self.skipped) > 3 else ''})")
        if len(self.sizes) > 1:
            parts.append("sizes " + ", ".join(f"{w}x{h} ({n})" for (w, h), n in sorted(self.sizes.items())))
        elif self.size:
            parts.append(f"{self.size[0]}x{self.size[1]}")
        if self.fps is not None:
            parts.append(f"at {float(self.fps):.3f} fps ({self.codec})")
        if self.stages:
            parts.append("median " + ", ".join(f"{k} {statistics.median(v):.1f} ms" for k, v in self.stages.items()))
        parts.append(f"{self.seconds:.1f} s total")
        if self.partial:
            parts.append(f"PARTIAL ({self.partial})")
        return ", ".join(parts)


# -- command line --------------------------------------------------------------------------------
def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "enhance", help="enhance an image, a folder of images or a video",
        description="Enhance IN (an image, a folder of images, or a video) with a processor and write OUT. "
                    "Videos keep their frame rate and frame count; IN is never overwritten.",
    )
    p.add_argument("input", metavar="IN", type=Path, help="image, folder of images, or video file")
    p.add_argument("-o", "--output", metavar="OUT", type=Path, required=True,
                   help="output file (or folder, for a folder IN); the video container follows the extension")
    p.add_argument("--model", default="student_sr",
                   help="processor: bicubic, passthrough, or an 'sr' model in the weights manifest (default: student_sr)")
    p.add_argument("--weights", type=Path, default=WEIGHTS_DIR, help="weights directory (default: the bundled one)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--codec", default="auto",
                   help="video encoder, e.g. libx264, mpeg4, mjpeg (default: the best the container and build allow)")
    p.add_argument("--backend", choices=("auto", "av", "opencv"), default="auto",
                   help="video decode/encode library (default: PyAV, OpenCV if PyAV is missing)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--allow-partial", action="store_true",
                   help="a video that ends before the frames its container promises (a truncated file) is "
                        "written with the frames it has instead of failing")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        plan_output(args.input, args.output)  # refuse bad paths before loading a model
        processor = _make_processor(args.model, args.weights, args.threads)
    except (EnhanceError, WeightsError) as exc:
        print(f"eyefuse enhance: {exc}", file=sys.stderr)
        return 1
    try:
        summary = enhance_path(args.input, args.output, processor, codec=args.codec, backend=args.backend,
                               progress=not args.no_progress, allow_partial=args.allow_partial)
    except EnhanceError as exc:
        print(f"eyefuse enhance: {exc}", file=sys.stderr)
        return 1
    finally:
        processor.close()
    print(summary.describe())
    for failure in summary.failed:
        print(f"eyefuse enhance: skipped {failure}", file=sys.stderr)
    return 1 if summary.failed else 0


def _make_processor(name: str, weights_dir: Path, threads: int | None) -> Processor:
    from engine.registry import make_processor
    from engine.runtime import SessionConfig

    cfg = SessionConfig(intra_op_threads=threads) if threads else SessionConfig()
    return make_processor(name, weights_dir, cfg)


# -- what goes where ----------------------------------------------------------------------------
RAW_EXTS = {".dng"}


def input_kind(src: Path) -> str:
    """'folder', 'image' or 'video' (anything else is tried as a video and named if it fails)."""
    if src.is_dir():
        return "folder"
    if not src.exists():
        raise EnhanceError(f"input {src} does not exist")
    if src.suffix.lower() in RAW_EXTS:
        raise EnhanceError(f"{src} is a RAW DNG: `enhance` takes images ({', '.join(sorted(IMAGE_EXTS))}) and "
                           f"videos. Merge and denoise RAW frames with `eyefuse enhance-burst {src} -o OUT.dng` "
                           f"(a folder or a glob of DNGs for a burst)")
    return "image" if src.suffix.lower() in IMAGE_EXTS else "video"


def check_writable(folder: Path) -> None:
    """Raise EnhanceError naming `folder` when nothing can be written there (permissions, a
    read-only mount), before any work is done."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise EnhanceError(f"cannot write to {folder}: the folder is read-only or not ours; choose another OUT")


def plan_output(src: Path, dst: Path) -> Path:
    """The file (or folder) the job will write, after refusing anything that would overwrite IN."""
    src, dst = Path(src), Path(dst)
    kind = input_kind(src)
    if kind == "folder":
        if dst.exists() and not dst.is_dir():
            raise EnhanceError(f"IN {src} is a folder, so OUT must be a folder too, but {dst} is a file")
        if _same_path(src, dst):
            raise EnhanceError(f"OUT {dst} is the input folder {src}; the outputs would overwrite the inputs. "
                               f"Choose another folder.")
        check_writable(dst if dst.exists() else dst.parent)
        return dst
    if dst.is_dir():  # a folder for one input: keep the input's name
        dst = dst / (src.name if kind == "image" else src.stem + ".mp4")
    if _same_path(src, dst):
        raise EnhanceError(f"OUT {dst} is the input file {src}; refusing to overwrite the input. "
                           f"Choose another output name.")
    suffix = dst.suffix.lower()
    if kind == "image" and not cv2.haveImageWriter(str(dst)):
        raise EnhanceError(f"cannot write images of type {dst.suffix or '(no extension)'!r} ({dst}); "
                           f"use one of {', '.join(sorted(IMAGE_EXTS))}")
    if kind == "video" and suffix not in VIDEO_CODECS:
        raise EnhanceError(f"cannot write video {dst}: unknown container {dst.suffix or '(no extension)'!r}; "
                           f"use one of {', '.join(VIDEO_CODECS)}")
    if not dst.parent.is_dir():
        raise EnhanceError(f"output folder {dst.parent} does not exist; create it first")
    check_writable(dst.parent)
    return dst


def _same_path(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)  # hard links
    except OSError:
        return False


@contextlib.contextmanager
def atomic_output(dst: Path) -> Iterator[Path]:
    """capture.atomic.atomic_output, with a failure to write turned into an EnhanceError naming OUT."""
    try:
        with shared_atomic_output(dst) as tmp:
            yield tmp
    except FileNotFoundError as exc:
        raise EnhanceError(f"nothing was written for {dst}") from exc
    except OSError as exc:
        raise EnhanceError(f"cannot write {dst}: {exc.strerror or exc}") from exc


# -- jobs ------------------------------------------------------------------------------------------
def enhance_path(src: Path, dst: Path, processor: Processor, codec: str = "auto", backend: str = "auto",
                 progress: bool = True, allow_partial: bool = False) -> EnhanceSummary:
    """Enhance IN into OUT with `processor`. Raises EnhanceError naming the file on failure (a video
    that ends before the frames its container promises, too, unless `allow_partial`)."""
    src = Path(src)
    dst = plan_output(src, dst)
    t0 = time.monotonic()
    kind = input_kind(src)
    if kind == "folder":
        summary = enhance_folder(src, dst, processor, progress)
    elif kind == "image":
        summary = EnhanceSummary(dst)
        summary.add(enhance_image(src, dst, processor))
    else:
        summary = enhance_video(src, dst, processor, codec, backend, progress, allow_partial)
    summary.seconds = time.monotonic() - t0
    return summary


ALPHA_EXTS = {".png", ".tif", ".tiff", ".webp"}


def read_image(path: Path) -> tuple[Frame, np.ndarray | None]:
    """An image file as a BGR8 Frame, and its alpha channel (uint8, or None). Grey images become
    BGR, and EXIF orientation is applied as a viewer would. 16-bit images are refused: the models
    take 8 bits, and writing 8 bits back would silently throw away half of every sample."""
    data = np.fromfile(str(path), np.uint8)  # imdecode, unlike imread, works for any path encoding
    raw = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None  # depth and alpha as stored
    if raw is None:
        raise EnhanceError(f"cannot decode image {path}: it is empty, truncated or not an image OpenCV reads")
    if raw.dtype != np.uint8:
        raise EnhanceError(f"{path} has {raw.dtype.itemsize * 8}-bit samples; the models work on 8-bit images and "
                           f"enhance does not write fewer bits than it read. Convert it to 8 bits first")
    alpha = raw[..., 3] if raw.ndim == 3 and raw.shape[2] == 4 else None
    if alpha is not None and alpha.min() == 255:
        alpha = None  # an opaque alpha (a 32-bit BMP's padding byte, say) carries nothing
    if alpha is None:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)  # with the EXIF orientation applied
    else:  # formats with alpha rarely carry an orientation; the colour and alpha stay as stored, aligned
        bgr = cv2.cvtColor(raw, cv2.COLOR_BGRA2BGR)
    return Frame(np.ascontiguousarray(bgr), 0, time.monotonic_ns(), str(path), PixelFormat.BGR8), alpha


def _run(processor: Processor, frames: list[Frame], path: Path, index: int | None = None) -> Result:
    try:
        return processor.process(frames)
    except ProcessingError as exc:
        where = f"{path}" if index is None else f"{path} frame {index}"
        raise EnhanceError(f"{processor.name} failed on {where}: {exc}") from exc


def enhance_image(src: Path, dst: Path, processor: Processor) -> Result:
    frame, alpha = read_image(src)
    if alpha is not None and dst.suffix.lower() not in ALPHA_EXTS:
        raise EnhanceError(f"{src} has an alpha channel, which {dst.suffix} files cannot hold; write "
                           f"{', '.join(sorted(ALPHA_EXTS))} to keep it")
    result = _run(processor, [frame] * processor.frames_needed, src)  # a still is its own burst
    out = result.output
    if alpha is not None:  # carried through, scaled as the picture was
        h, w = out.shape[:2]
        out = np.dstack([out, cv2.resize(alpha, (w, h), interpolation=cv2.INTER_CUBIC)])
    ok, data = cv2.imencode(dst.suffix, out)
    if not ok:
        raise EnhanceError(f"OpenCV could not encode {dst} as {dst.suffix}")
    with atomic_output(dst) as tmp:
        tmp.write_bytes(data.tobytes())
    return result


def enhance_folder(src: Path, dst: Path, processor: Processor, progress: bool) -> EnhanceSummary:
    """Every image directly in `src` -> same name in `dst`. A file that fails is reported and skipped."""
    from tqdm import tqdm

    entries = sorted(p for p in src.iterdir() if p.is_file())
    files = [p for p in entries if p.suffix.lower() in IMAGE_EXTS]
    if not files:
        raise EnhanceError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in folder {src}")
    dst.mkdir(parents=True, exist_ok=True)
    summary = EnhanceSummary(dst)
    summary.skipped = [p.name for p in entries if p.suffix.lower() not in IMAGE_EXTS and not p.name.startswith(".")]
    for path in tqdm(files, desc=src.name, unit="image", disable=not progress, file=sys.stderr):
        try:
            summary.add(enhance_image(path, dst / path.name, processor))
        except EnhanceError as exc:
            summary.failed.append(str(exc))
    return summary


# -- video ---------------------------------------------------------------------------------------
def enhance_video(src: Path, dst: Path, processor: Processor, codec: str = "auto", backend: str = "auto",
                  progress: bool = True, allow_partial: bool = False) -> EnhanceSummary:
    from tqdm import tqdm

    use_av = backend == "av" or (backend == "auto" and av is not None)
    if use_av and av is None:
        raise EnhanceError("PyAV is not installed; install it (pip install av) or use --backend opencv")
    reader = _AvReader(src) if use_av else _Cv2Reader(src)
    summary = EnhanceSummary(dst, fps=reader.fps)
    window: collections.deque[Frame] = collections.deque(maxlen=processor.frames_needed)
    try:
        with atomic_output(dst) as tmp:
            writer = None
            try:
                bar = tqdm(total=reader.frame_estimate, desc=src.name, unit="frame", disable=not progress,
                           file=sys.stderr)
                with bar:
                    for i, bgr in enumerate(reader):
                        window.append(Frame(bgr, i, time.monotonic_ns(), str(src), PixelFormat.BGR8))
                        result = _run(processor, list(window), src, i)
                        if writer is None:  # sized by the first output
                            h, w = result.output.shape[:2]
                            writer = (_AvWriter if use_av else _Cv2Writer)(tmp, w, h, reader.fps, codec)
                            summary.codec = writer.codec
                        writer.write(result.output)
                        summary.add(result)
                        bar.update()
                if writer is None:
                    raise EnhanceError(f"cannot decode video {src}: it has no frames")
                missing = reader.missing_frames(summary.frames)
                if missing and not allow_partial:
                    raise EnhanceError(f"{src} ended after {summary.frames} of the {summary.frames + missing} frames its "
                                       f"container promises (a truncated or damaged file); nothing was written. "
                                       f"--allow-partial writes the {summary.frames} frames there are")
                if missing:
                    summary.partial = f"{summary.frames} of {summary.frames + missing} frames: the input is truncated"
                writer.close()
                writer = None
            finally:
                if writer is not None:
                    writer.abort()
    finally:
        reader.close()
    return summary


def _pick_encoder(suffix: str, requested: str) -> str:
    candidates = VIDEO_CODECS[suffix.lower()] if requested == "auto" else [requested]
    for name in candidates:
        try:
            return av.codec.Codec(name, "w").name  # "h264" resolves to the build's H.264 encoder
        except Exception:  # not in this FFmpeg build
            continue
    have = sorted(c for c in ("libx264", "mpeg4", "mjpeg", "libvpx-vp9", "libvpx") if c in av.codecs_available)
    raise EnhanceError(f"no encoder among {candidates} in this PyAV/FFmpeg build for {suffix} files "
                       f"(available here: {', '.join(have) or 'none'}); choose another --codec or extension")


class _AvReader:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.container = av.open(str(path))
        except Exception as exc:  # av.error.* (InvalidDataError, ...) or OSError
            raise EnhanceError(f"cannot decode {path} as an image or a video: {exc}") from exc
        if not self.container.streams.video:
            self.container.close()
            raise EnhanceError(f"cannot decode video {path}: it has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame-threaded decoding
        # guessed_rate is what ffmpeg itself keeps when transcoding (e.g. 30 for a 33 ms-timestamped webm)
        rate = self.stream.guessed_rate or self.stream.average_rate or self.stream.base_rate
        self.fps = Fraction(rate).limit_denominator(65535) if rate else DEFAULT_FPS
        self.frame_estimate = self.stream.frames or None
        self.frames_exact = self.frame_estimate is not None  # the container's own count, not a guess
        if self.frame_estimate is None and self.stream.duration and self.stream.time_base:
            self.frame_estimate = round(float(self.stream.duration * self.stream.time_base * self.fps)) or None

    def missing_frames(self, read: int) -> int:
        """How many frames the container promised beyond the `read` decoded: exactly, from its frame
        count; from its duration (a rounded estimate) only beyond a frame's slack."""
        if self.frame_estimate is None:
            return 0
        short = self.frame_estimate - read
        return short if short > (0 if self.frames_exact else 1) else 0

    def __iter__(self) -> Iterator[np.ndarray]:
        i = 0
        try:
            for frame in self.container.decode(self.stream):
                yield frame.to_ndarray(format="bgr24")
                i += 1
        except EnhanceError:
            raise
        except Exception as exc:  # av.error.* mid-stream
            raise EnhanceError(f"cannot decode video {self.path} at frame {i}: {exc}") from exc

    def close(self) -> None:
        self.container.close()


class _AvWriter:
    def __init__(self, path: Path, width: int, height: int, fps: Fraction, codec: str):
        self.codec = _pick_encoder(path.suffix, codec)
        self.container = av.open(str(path), mode="w")
        try:
            self.stream = self.container.add_stream(self.codec, rate=fps)
            self.stream.width, self.stream.height = width, height
            self.stream.pix_fmt = "yuvj420p" if self.codec == "mjpeg" else "yuv420p"
            self.stream.codec_context.time_base = 1 / fps  # one tick per frame: constant frame rate
            if self.codec == "libx264":
                self.stream.options = {"crf": "18", "preset": "veryfast"}
            elif self.codec in ("mpeg4", "mjpeg"):
                self.stream.codec_context.qscale = 3  # fixed near-transparent quantiser, not the default bitrate
        except Exception as exc:
            self.container.close()
            raise EnhanceError(f"cannot set up the {self.codec} encoder for {width}x{height} at {fps} fps: {exc}") from exc
        self.n = 0

    def write(self, bgr: np.ndarray) -> None:
        # via rgb24: swscale's bgr24 -> yuv420p path is inaccurate (shifts levels by up to 4)
        frame = av.VideoFrame.from_ndarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), format="rgb24")
        frame.pts = self.n
        self.n += 1
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))  # flush the encoder's delayed frames
        self.container.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.container.close()


class _Cv2Reader:
    def __init__(self, path: Path):
        self.path = path
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            raise EnhanceError(f"cannot decode {path} as an image or a video (OpenCV could not open it)")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = Fraction(fps).limit_denominator(1001) if fps and fps > 0 else DEFAULT_FPS
        self.frame_estimate = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None

    def missing_frames(self, read: int) -> int:
        """Frames OpenCV's count promised beyond those read (its count can be off by one: slack of 1)."""
        short = (self.frame_estimate or 0) - read
        return short if short > 1 else 0

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            ok, bgr = self.cap.read()
            if not ok:
                return
            yield bgr

    def close(self) -> None:
        self.cap.release()


class _Cv2Writer:
    def __init__(self, path: Path, width: int, height: int, fps: Fraction, codec: str):
        fourcc = _CV2_FOURCC.get(path.suffix.lower()) if codec == "auto" else codec
        if fourcc is None or len(fourcc) != 4:
            raise EnhanceError(f"the OpenCV backend writes {', '.join(_CV2_FOURCC)} files with a 4-letter "
                               f"--codec (FourCC); got {path.suffix!r} / {codec!r}")
        self.codec = fourcc
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), (width, height))
        if not self.writer.isOpened():
            raise EnhanceError(f"OpenCV cannot write {fourcc} video to {path}; try another extension or --codec")

    def write(self, bgr: np.ndarray) -> None:
        self.writer.write(bgr)

    def close(self) -> None:
        self.writer.release()

    def abort(self) -> None:
        self.writer.release()
