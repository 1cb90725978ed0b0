"""`eyefuse enhance-burst 'frames/*.dng' -o merged.dng`: a handheld RAW burst -> one clean RAW frame.

The same fuse_burst the live BurstFusion processor runs (align, merge, lens), on DNG files: the
output is a Bayer DNG in the input's CFA pattern with the reference frame's metadata (levels
rescaled to --bits, colour matrix, white balance, the merged frame's noise profile, lens opcodes
kept or, with --lens raw, applied and removed), written atomically. Corrupt files are reported and
skipped; frames of another size, pattern or exposure stop the job unless --on-mismatch exclude.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from capture.dng import load_burst, write_dng

DEFAULT_BITS = 16


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "enhance-burst", help="merge a RAW (DNG) burst into one clean DNG",
        description="Align and merge a handheld burst of DNG frames into one low-noise RAW frame in the "
                    "reference frame's layout and metadata. IN is a folder, a glob such as 'frames/*.dng' "
                    "(quote it), or a list of files (kept in the order given).",
    )
    p.add_argument("inputs", metavar="IN", nargs="+", help="folder, glob or DNG files of one burst")
    p.add_argument("-o", "--output", metavar="OUT", type=Path, required=True, help="the merged DNG to write")
    p.add_argument("--frames", type=int, default=None, help="use only the first N frames (default: all)")
    p.add_argument("--reference", default="first",
                   help="the frame the others are merged into: first, newest, or an index (default: first)")
    p.add_argument("--aligner", choices=("tiles", "dis"), default="tiles",
                   help="tiles: coarse-to-fine tile alignment (default); dis: OpenCV DIS optical flow")
    p.add_argument("--merge", choices=("wiener", "robust", "mean"), default="wiener",
                   help="wiener: HDR+ frequency-domain merge (default); robust: per-pixel robust average; "
                        "mean: plain average of the aligned frames")
    p.add_argument("--strength", type=float, default=None, help="Wiener temporal strength (default 8)")
    p.add_argument("--spatial", type=float, default=None, help="Wiener spatial denoise strength (default 3; 0: off)")
    p.add_argument("--bits", type=int, choices=(12, 16), default=DEFAULT_BITS,
                   help="bit depth of the output samples (default 16; levels are rescaled)")
    p.add_argument("--lens", choices=("keep", "raw"), default="keep",
                   help="keep: leave lens opcodes in the output for the raw converter (default); raw: apply "
                        "them (and an estimated lateral-CA model with --estimate-ca) to the pixels")
    p.add_argument("--estimate-ca", action="store_true",
                   help="with --lens raw: estimate and correct lateral chromatic aberration when the DNG has no "
                        "WarpRectilinear opcode")
    p.add_argument("--noise", choices=("auto", "metadata", "estimate"), default="auto",
                   help="the noise model the merge uses: auto (the DNG's NoiseProfile, unless the burst itself "
                        "shows noise more than 4x off either way; measured from the burst when there is none; "
                        "default), metadata (the NoiseProfile whenever there is one), estimate (always measured)")
    p.add_argument("--refine", choices=("off", "regressor", "teacher"), default="off",
                   help="after the merge, a learned refinement in a RAW latent space: regressor (one pass) or "
                        "teacher (the latent diffusion model, --steps steps; slow, offline); default off")
    p.add_argument("--steps", type=int, default=50, help="the teacher's sampler steps (default 50)")
    p.add_argument("--on-mismatch", choices=("raise", "exclude"), default="raise",
                   help="frames of another size, pattern or exposure: stop (default) or leave them out")
    p.add_argument("--preview", type=Path, default=None, help="also write a PNG of the merged frame through the ISP")
    p.set_defaults(run=run)


class BurstCommandError(Exception):
    """The job cannot be done as asked; the message says why and what to do."""


def run(args: argparse.Namespace) -> int:
    try:
        summary = enhance_burst(args)
    except BurstCommandError as exc:
        print(f"eyefuse enhance-burst: {exc}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def _reference(text: str) -> str | int:
    if text in ("first", "newest"):
        return text
    try:
        return int(text)
    except ValueError:
        raise BurstCommandError(f"--reference must be first, newest or a frame index, got {text!r}") from None


def _check_output(out: Path, inputs: list[Path]) -> None:
    if out.suffix.lower() != ".dng":
        raise BurstCommandError(f"the output {out} must end in .dng (the merged frame stays RAW); "
                                f"use --preview for a PNG")
    if not out.parent.is_dir():
        raise BurstCommandError(f"output folder {out.parent} does not exist; create it first")
    if out.is_dir():
        raise BurstCommandError(f"the output {out} is a folder; give a file name such as {out / 'merged.dng'}")
    resolved = out.resolve()
    for p in inputs:
        if p.resolve() == resolved:
            raise BurstCommandError(f"the output {out} is one of the input frames; refusing to overwrite it")


def enhance_burst(args: argparse.Namespace) -> str:
    """Do the job described by the parsed arguments; returns the summary line. Raises
    BurstCommandError with a message for the user."""
    from engine.burst.align import AlignConfig
    from engine.burst.fusion import BurstConfig, fuse_burst, merged_frame, prepare_for_bursts
    from engine.burst.merge import MergeConfig
    from engine.burst.raw import BurstError
    from engine.processor import ProcessingError, StageTimer

    t0 = time.monotonic()
    spec = args.inputs[0] if len(args.inputs) == 1 else args.inputs
    try:
        # every file is read, so one message can name every bad one (unreadable and mismatched)
        loaded = load_burst(spec, on_mismatch="exclude", reference=_reference(args.reference))
    except (FileNotFoundError, ValueError) as exc:
        raise BurstCommandError(str(exc)) from exc
    if loaded.mismatched and args.on_mismatch == "raise":
        listed = "; ".join(f"{e.path.name}: {e.reason}" for e in loaded.errors)
        raise BurstCommandError(f"{len(loaded.errors)} of {len(loaded.errors) + len(loaded.frames)} files cannot join "
                                f"the burst: {listed}. Keep one camera mode per burst, or leave the odd frames "
                                f"out with --on-mismatch exclude")
    for skipped in loaded.errors:
        print(f"eyefuse enhance-burst: skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    frames, paths = loaded.frames, loaded.paths
    if not frames:
        raise BurstCommandError(f"none of the {len(loaded.errors)} input files could be read as DNG")
    if args.frames is not None:
        if args.frames < 1:
            raise BurstCommandError(f"--frames must be at least 1, got {args.frames}")
        frames, paths = frames[: args.frames], paths[: args.frames]
    _check_output(args.output, [Path(p) for p in loaded.paths])
    merge_kw = {k: v for k, v in (("strength", args.strength), ("spatial", args.spatial)) if v is not None}
    try:
        cfg = BurstConfig(reference=loaded.reference, align=AlignConfig(method=args.aligner),
                          merge=MergeConfig(method=args.merge, **merge_kw),
                          lens="raw" if args.lens == "raw" else "off", lens_estimate=args.estimate_ca,
                          on_mismatch=args.on_mismatch, noise=args.noise)
    except ValueError as exc:
        raise BurstCommandError(str(exc)) from exc
    refiner = None
    if args.refine != "off":
        from engine.burst.refine import BurstRefiner, RefineConfig
        from engine.manifest import WeightsError

        try:
            refiner = BurstRefiner(RefineConfig(args.refine, args.steps))
        except (ValueError, WeightsError) as exc:
            raise BurstCommandError(str(exc)) from exc
    timer = StageTimer()
    with timer.stage("first-run compile"):  # numba's, once per machine (cached after): kept out of the stages
        prepare_for_bursts(cfg, announce=lambda msg: print(f"eyefuse enhance-burst: {msg}", file=sys.stderr))
    if timer.stages["first-run compile"] < 1000.0:
        del timer.stages["first-run compile"]
    try:
        fused = fuse_burst(frames, cfg, timer, warn=False)  # its notes are printed below, once
    except (BurstError, ProcessingError) as exc:
        names = ", ".join(p.name for p in paths[:4]) + (" ..." if len(paths) > 4 else "")
        raise BurstCommandError(f"{exc} (frames: {names})") from exc
    for i, why in fused.excluded:
        print(f"eyefuse enhance-burst: left out {paths[i]}: {why}", file=sys.stderr)
    if refiner is not None:
        with timer.stage("refine"):
            fused.planes = refiner.refine(fused)
        if refiner.last_note:
            print(f"eyefuse enhance-burst: {refiner.last_note}", file=sys.stderr)
    for note in fused.warnings:
        if fused.noise_report is None or note != fused.noise_report.describe():  # said in the summary
            print(f"eyefuse enhance-burst: {note}", file=sys.stderr)
    with timer.stage("write"):
        frame = merged_frame(fused, args.bits, source=str(args.output))
        try:
            write_dng(args.output, frame, bits=args.bits)
        except (ValueError, OSError) as exc:
            raise BurstCommandError(f"cannot write {args.output}: {exc}") from exc
    if args.preview is not None:
        _write_preview(args.preview, fused)
    ratio = sum(fused.noise_out().offset) / max(sum(fused.noise.offset), 1e-30)
    stages = ", ".join(f"{k} {v:.0f} ms" for k, v in timer.stages.items())
    ref_name = paths[fused.ref].name
    return (f"wrote {args.output}: {len(fused.used)} of {len(frames)} frames merged into {ref_name} "
            f"({frame.width}x{frame.height} {frame.raw.cfa_pattern}, {args.bits}-bit), noise variance x{ratio:.2f} "
            f"(written as its NoiseProfile); {stages}; {time.monotonic() - t0:.1f} s total\n"
            f"{fused.noise_report.describe()}")


def _write_preview(path: Path, fused) -> None:
    import cv2

    from capture.atomic import atomic_write_bytes
    from engine.burst.finish import finish

    ok, data = cv2.imencode(path.suffix or ".png", finish(fused.planes, fused.meta))
    if not ok:
        raise BurstCommandError(f"OpenCV cannot write a {path.suffix!r} preview ({path}); use .png or .jpg")
    atomic_write_bytes(path, data.tobytes())
