"""Burst fusion: raw -> align -> merge -> lens -> (finish), offline and as the live BurstFusion.

    fuse_burst(frames, cfg) -> FusedBurst       the merged RAW planes with their metadata
    merged_frame(fused, bits) -> Frame          a BAYER16 Frame in the input's CFA layout, ready
                                                for capture.dng.write_dng (levels rescaled to the
                                                bit depth, noise profile updated)
    BurstFusion                                 the engine Processor ("burst_fusion"): the newest
                                                N frames of the ring, the newest as reference,
                                                shown through the finish ISP

Bad input: frames whose size, CFA pattern, levels or exposure differ from the reference raise
BurstError naming them (cfg.on_mismatch="exclude" drops them instead and reports them in
FusedBurst.excluded); one frame comes back unchanged with a warning; hot and dead pixels (found
in frames the camera moved between, so scene detail is not mistaken for them) are repaired
before the merge. The noise model comes from the metadata or is measured from the aligned burst
itself (engine/burst/noise.py; cfg.noise says which, and "auto" checks the metadata against the
burst); FusedBurst.noise_report says which was used and why.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from capture.frame import Frame, PixelFormat, RawMeta
from engine.burst.align import AlignConfig, Alignment, align
from engine.burst.align import warm_up as warm_up_align
from engine.burst.finish import FinishConfig, finish
from engine.burst.lens import LensModel, correct, estimate_lateral_ca, without_lens_opcodes
from engine.burst.merge import MergeConfig, merge
from engine.burst.merge import warm_up as warm_up_merge
from engine.burst.noise import NOISE_MODES, NoiseReport, choose_noise, estimate_noise_burst, mid_grey_ratio
from engine.burst.raw import (
    BurstError,
    NoiseModel,
    black_levels,
    check_burst,
    defect_mask,
    denormalise,
    displaced_frames,
    estimate_noise,
    grey,
    normalise,
    repair_defects,
)
from engine.processor import FrameFormatError, Processor, StageTimer, StepsNotSupported


REALIGN = 1.1  # noise models further apart than this (variance at mid grey) align differently


@dataclass(frozen=True)
class BurstConfig:
    """How a burst is fused.

    reference: "newest" (the last frame: what a live view shows), "first", or a frame index.
    lens: "off"; "display" (correct only what is shown); "raw" (correct the merged RAW and drop
        the applied opcodes from its metadata). Either way the opcodes drive the correction when
        present; lens_estimate adds a lateral-CA estimate when there are none.
    on_mismatch: "raise" (BurstError) or "exclude" (drop the odd frames, list them).
    repair_defects: find and fix hot/dead pixels that stay put while the scene moves.
    noise: "auto" (the metadata's noise profile, unless the burst measures one more than 4x off
        either way; measured when there is none), "metadata" (the profile whenever there is one),
        "estimate" (always measured from the burst).
    """

    reference: str | int = "newest"
    align: AlignConfig = field(default_factory=AlignConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    finish: FinishConfig = field(default_factory=FinishConfig)
    lens: str = "display"
    lens_estimate: bool = False
    on_mismatch: str = "raise"
    repair_defects: bool = True
    noise: str = "auto"

    def __post_init__(self) -> None:
        if self.noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}, got {self.noise!r}")
        if self.lens not in ("off", "display", "raw"):
            raise ValueError(f"lens must be 'off', 'display' or 'raw', got {self.lens!r}")
        if self.on_mismatch not in ("raise", "exclude"):
            raise ValueError(f"on_mismatch must be 'raise' or 'exclude', got {self.on_mismatch!r}")
        if not (self.reference in ("newest", "first") or isinstance(self.reference, int)):
            raise ValueError(f"reference must be 'newest', 'first' or a frame index, got {self.reference!r}")


@dataclass
class FusedBurst:
    """The result of fuse_burst.

    planes: (4, h, w) float32 merged planes, normalised (0 = black, 1 = white); lens-corrected
        when cfg.lens == "raw".
    ref_planes: (4, h, w) the reference frame's normalised planes (after defect repair).
    meta: the reference's RawMeta with the merged noise profile (and without the applied lens
        opcodes when they were applied).
    noise: the input noise model (noise_out() gives the merged frame's).
    ref: index of the reference in the frames given; used: indices merged (reference included);
    excluded: (index, why) of frames left out. lens: the lens model in effect.
    defects: (4, h, w) bool mask of the hot/dead pixels repaired, or None.
    noise_report: where `noise` came from (metadata, measured from the burst, or from the
        reference frame alone) and how the metadata compared with the burst.
    """

    planes: np.ndarray
    ref_planes: np.ndarray
    meta: RawMeta
    noise: NoiseModel
    alignment: Alignment | None
    ref: int
    used: list[int]
    excluded: list[tuple[int, str]]
    lens: LensModel
    defects: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    noise_report: NoiseReport | None = None
    _noise_out: NoiseModel | None = field(default=None, repr=False)

    def noise_out(self) -> NoiseModel:
        """The merged frame's noise model (measured on first use: the live view never needs it)."""
        if self._noise_out is None:
            self._noise_out = self.noise if self.alignment is None else merged_noise(self.ref_planes, self.planes, self.noise)
        return self._noise_out


def prepare_for_bursts(cfg: BurstConfig, announce: Callable[[str], None] | None = None) -> None:
    """Compile (or load from numba's cache) the compiled loops `cfg`'s aligner and merge use, on
    the calling thread, so a later burst does not stop for it. When some are not cached on this
    machine yet, `announce` is told first (a minute of compiling, once per machine: `make run` and
    `make test` compile them during set-up)."""
    from engine.burst.sampling_kernels import uncached

    cold = uncached()
    if cold and announce is not None:
        announce(f"compiling {len(cold)} burst kernels for this machine (once; about a minute, cached after)")
    if cfg.align.method == "tiles":
        warm_up_align()
    if cfg.merge.method == "wiener":
        warm_up_merge(cfg.merge.tile)


def reference_index(n: int, reference: str | int) -> int:
    """The reference frame's index in a burst of n frames."""
    if reference == "newest":
        return n - 1
    if reference == "first":
        return 0
    if not -n <= int(reference) < n:
        raise BurstError(f"reference frame {reference} is outside the burst of {n} frames (0..{n - 1})")
    return int(reference) % n


def fuse_burst(frames: Sequence[Frame], cfg: BurstConfig = BurstConfig(), timer: StageTimer | None = None,
               warn: bool = True, defects: np.ndarray | None = None,
               noise: NoiseReport | None = None) -> FusedBurst:
    """Merge a burst of BAYER16 frames into one clean RAW frame at the reference's position.

    Stages are timed into `timer` as raw, align, noise, merge, lens. Raises BurstError for frames
    that cannot be merged (see the module docstring) and FrameFormatError for non-RAW input. A
    burst of one frame comes back unchanged, with a UserWarning when `warn`. `defects`: a
    (4, h, w) defect mask found earlier; `noise`: a noise report made earlier (a live stream
    reuses both: sensor defects do not move, and the noise changes only with the exposure).
    """
    timer = timer or StageTimer()
    if not frames:
        raise BurstError("fuse_burst needs at least one frame, got none")
    ref = reference_index(len(frames), cfg.reference)
    notes: list[str] = []
    with timer.stage("raw"):
        problems = check_burst(frames, ref)
        if problems and problems[0][0] == ref:
            raise FrameFormatError(problems[0][1])
        if problems and cfg.on_mismatch == "raise":
            listed = "; ".join(f"frame {i} ({frames[i].source}): {why}" for i, why in problems)
            raise BurstError(f"{len(problems)} frame(s) cannot be merged with reference frame {ref}: {listed}. "
                             f"Use frames of one camera mode and exposure, or exclude the odd ones "
                             f"(on_mismatch='exclude', --on-mismatch exclude)")
        bad = {i for i, _ in problems}
        used = [i for i in range(len(frames)) if i not in bad]
        meta = frames[ref].raw
        h, w = frames[ref].pixels.shape
        stack = np.empty((len(used), 4, h // 2, w // 2), np.float32)
        for k, i in enumerate(used):
            normalise(frames[i].pixels, meta, out=stack[k])
        r = used.index(ref)
        metadata = NoiseModel.from_meta(meta)
        # the aligner needs a noise model before the burst can measure one: the profile, or the
        # reference frame's own estimate (it only sets how far a flat tile's flow is trusted)
        single = estimate_noise(stack[r]) if noise is None and (metadata is None or cfg.noise == "estimate") else None
    if len(used) == 1:
        msg = "a burst of one frame: returned unchanged (nothing to merge)"
        if warn:
            warnings.warn(msg, stacklevel=2)
        notes.append(msg)
        report = noise or choose_noise(metadata, None, single, cfg.noise)
        planes, out_meta, lens = _apply_lens(stack[0], meta, cfg, timer)
        return FusedBurst(planes, stack[0], out_meta, report.model, None, ref, used,
                          [(i, w) for i, w in problems], lens, None, notes, report)
    grey_stack = grey(stack)
    aligned_with = noise.model if noise else metadata or single
    with timer.stage("align"):
        alignment = align(grey_stack, r, aligned_with, cfg.align)
    if noise is None:
        with timer.stage("noise"):
            measured = None
            if cfg.noise != "metadata" or metadata is None:
                floor = float(np.min(-black_levels(meta) / (meta.white_level - black_levels(meta))))
                measured = estimate_noise_burst(stack, alignment, floor)
            noise = choose_noise(metadata, measured, single, cfg.noise)
        # The aligner trusts a tile's own flow by its texture against the noise: aligned under a
        # noise model far from the one now chosen (a single frame's estimate, which reads fine
        # texture as noise), the burst is aligned again (on Kodak bursts at gain 1 this was worth
        # up to 1.2 dB of the merge).
        if not 1 / REALIGN <= mid_grey_ratio(noise.model, aligned_with) <= REALIGN:
            with timer.stage("align"):
                alignment = align(grey_stack, r, noise.model, cfg.align)
    if noise.source != "metadata" or noise.disagrees:
        notes.append(noise.describe())
    mask = None
    if cfg.repair_defects:
        with timer.stage("raw"):
            if defects is not None and defects.shape == stack.shape[1:]:
                mask = defects
            else:
                mask = defect_mask(stack, noise.model, displaced_frames(_offsets(alignment), r))
            repair_defects(stack, mask, inplace=True)  # the stack is this call's own; an empty mask is a no-op
    with timer.stage("merge"):
        # the guard holds the merge to the burst's own noise where it was measured: a profile off
        # by less than DISAGREE is used for the merge, but must not excuse averaging detail away
        merged = merge(stack, alignment, noise.model, cfg.merge, guard_noise=noise.measured)
    merged, out_meta, lens = _apply_lens(merged, meta, cfg, timer)
    return FusedBurst(merged, stack[r], out_meta, noise.model, alignment, ref, used,
                      [(i, w) for i, w in problems], lens, mask, notes, noise)


def _offsets(alignment: Alignment) -> np.ndarray:
    """(N, 2) each frame's displacement from the reference at the image centre (plane pixels)."""
    h, w = alignment.shape
    if alignment.affine is not None:
        return alignment.affine[:, :, :2] @ np.array([w / 2, h / 2], np.float32) + alignment.affine[:, :, 2]
    return np.median(alignment.tile_flow.reshape(alignment.tile_flow.shape[0], -1, 2), axis=1)


def _apply_lens(planes: np.ndarray, meta: RawMeta, cfg: BurstConfig,
                timer: StageTimer) -> tuple[np.ndarray, RawMeta, LensModel]:
    """(4, H/2, W/2) planes -> (planes, output metadata, lens model). With cfg.lens "raw" the
    correction goes into the pixels and the lens opcodes leave the metadata (so a raw converter
    does not apply them twice); otherwise the pixels and opcodes stay as they are."""
    lens = _lens_model(planes, meta, cfg, timer)
    if cfg.lens != "raw" or lens.is_identity:
        return planes, meta, lens
    with timer.stage("lens"):
        planes = correct(planes, lens, meta.cfa_pattern)
    return planes, meta.replace(opcodes=without_lens_opcodes(meta.opcodes)), lens


def _lens_model(planes: np.ndarray, meta: RawMeta, cfg: BurstConfig, timer: StageTimer) -> LensModel:
    if cfg.lens == "off":
        return LensModel()
    with timer.stage("lens"):
        model = LensModel.from_opcodes(meta.opcodes)
        if model.is_identity and cfg.lens_estimate:
            model = estimate_lateral_ca(planes, meta.cfa_pattern)
    return model


def merged_noise(ref_planes: np.ndarray, merged: np.ndarray, noise: NoiseModel) -> NoiseModel:
    """The merged frame's noise model: the input model scaled, per plane, by how much the
    estimated noise fell from the reference to the merged frame (the same estimator on both, so
    its bias on texture cancels), kept between 1/N-like gains and 1."""
    before, after = estimate_noise(ref_planes), estimate_noise(merged)
    factor = []
    for p in range(4):
        x = 0.25  # compare at a mid level
        vb = before.scale[p] * x + before.offset[p]
        va = after.scale[p] * x + after.offset[p]
        factor.append(float(np.clip(va / vb, 1e-3, 1.0)) if vb > 0 else 1.0)
    return NoiseModel(tuple(s * f for s, f in zip(noise.scale, factor)),  # type: ignore[arg-type]
                      tuple(o * f for o, f in zip(noise.offset, factor)), noise.estimated)


def merged_frame(fused: FusedBurst, bits: int = 16, source: str = "burst") -> Frame:
    """The merged planes as a BAYER16 Frame in the reference's CFA pattern, with levels rescaled
    to `bits` (white = 2^bits - 1, black in proportion) and the fused metadata, its noise profile
    that of the merged frame (per colour, as DNG stores it)."""
    if not 8 <= bits <= 16:
        raise ValueError(f"bits must be between 8 and 16, got {bits}")
    meta = fused.meta.replace(noise_profile=fused.noise_out().as_profile(fused.meta.cfa_pattern))
    white = (1 << bits) - 1
    black = black_levels(meta) * (white / float(meta.white_level))
    black = tuple(float(round(b)) for b in black)
    mosaic = denormalise(fused.planes, black, white)
    out_meta = meta.replace(black_level=black, white_level=white, bits_per_sample=bits)
    return Frame(mosaic, 0, time.monotonic_ns(), source, PixelFormat.BAYER16, raw=out_meta)


def finish_for_display(planes: np.ndarray, meta: RawMeta, lens: LensModel, finish_cfg: FinishConfig,
                       correct_lens: bool = True, cache: dict | None = None) -> np.ndarray:
    """(4, h, w) planes -> (2h, 2w, 3) uint8 BGR: lens-corrected (when `correct_lens` and the
    model is not the identity) then finished. `cache` keeps the correction maps between calls."""
    if correct_lens and not lens.is_identity:
        from engine.burst.lens import apply_lens_maps, lens_maps

        key = (planes.shape, meta.cfa_pattern, lens.vignette, lens.warp, lens.centre,
               tuple(sorted(meta.opcodes.items())))
        maps = cache.get(key) if cache is not None else None
        if maps is None:
            maps = lens_maps(lens, meta.cfa_pattern, *planes.shape[1:])
            if cache is not None:
                cache.clear()
                cache[key] = maps
        planes = apply_lens_maps(planes, maps)
    return finish(planes, meta, finish_cfg)


class BurstFusion(Processor):
    """Live burst fusion: the newest `frames` RAW frames of the ring merged into the newest.

    BAYER16 frames only (the simulated Bayer camera, a DNG folder played as a stream). The
    "before" picture is the reference frame through the same ISP (and lens correction), so the
    two compare fairly. Frames that do not match the newest (after a source switch, say) are
    left out, not fatal.

    steps: the learned refinement after the merge (engine/burst/refine.py, the consistency
    student with its hallucination guard): 0 (off: the merge alone), 1, 2 or 4 sampler steps. Set
    between frames (the engine worker applies it between bursts, so one result never mixes two).
    Without the refinement's weights the burst path runs without it and `notice` says why; a
    refinement that gives NaN shows the merge for that burst, with a notice.
    """

    name = "burst_fusion"
    DEFECT_REFRESH = 64
    STEP_CHOICES = (0, 1, 2, 4)

    def __init__(self, frames: int = 8, config: BurstConfig | None = None, steps: int = 1,
                 weights_dir: str | None = None):
        if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
            raise ValueError(f"burst length must be a positive integer, got {frames!r}")
        self.frames_needed = frames
        cfg = config or BurstConfig(on_mismatch="exclude")
        self.config = dataclasses.replace(cfg, reference="newest")
        self._lens_cache: dict = {}
        self._warned_single = False
        self._defects: np.ndarray | None = None
        self._noise: NoiseReport | None = None
        self._noise_key: tuple | None = None
        self._calls = 0
        self.last: FusedBurst | None = None
        self.notice: str | None = None
        self.psnr_vs_truth: float | None = None
        self._refiners: dict[int, object] = {}
        self._refine_error: str | None = None
        self._load_refiners(weights_dir)
        self._steps = 0
        self.steps = steps if not self._refine_error else 0
        prepare_for_bursts(self.config)  # compile here (the loader's thread), not on the engine's first burst

    def _load_refiners(self, weights_dir) -> None:
        from engine.burst.refine import CONSISTENCY_STEPS, BurstRefiner, RefineConfig
        from engine.manifest import WEIGHTS_DIR, WeightsError

        try:
            for k in CONSISTENCY_STEPS:
                self._refiners[k] = BurstRefiner(RefineConfig("consistency", k), weights_dir or WEIGHTS_DIR)
        except WeightsError as exc:
            self._refiners.clear()
            self._refine_error = f"the learned refinement is off: {exc}"

    @property
    def steps(self) -> int:
        return self._steps

    @steps.setter
    def steps(self, value: int) -> None:
        if value not in self.STEP_CHOICES:
            raise ValueError(f"burst_fusion steps must be one of {self.STEP_CHOICES} (0: the merge alone), got {value!r}")
        if value and self._refine_error:
            raise StepsNotSupported(f"{self._refine_error}; only steps 0 (the merge alone) can run")
        self._steps = value

    def enhance(self, frames: Sequence[Frame], timer: StageTimer) -> tuple[np.ndarray, np.ndarray]:
        frames = list(frames)[-self.frames_needed :]
        ref = frames[-1]
        if ref.pixel_format is not PixelFormat.BAYER16:
            raise FrameFormatError(f"{self.name} needs BAYER16 RAW frames, got {ref.pixel_format.value} from "
                                   f"{ref.source!r}; use the simulated Bayer camera (simulated:bayer) or a DNG folder")
        # Sensor defects do not move, and the noise changes only with the exposure: look for them
        # again every DEFECT_REFRESH bursts (and the noise when the exposure or its profile changes).
        # What was found is kept only from a whole burst (the first bursts of a stream, or after a
        # source switch, are short: too few frames to tell a defect or to measure the noise), and
        # only for the camera settings it was found with.
        key = (ref.raw.exposure_time_s, ref.raw.iso, ref.raw.noise_profile, ref.pixels.shape)
        refresh = self._calls % self.DEFECT_REFRESH == 0 or key != self._noise_key
        known = None if refresh else self._defects
        noise = None if refresh else self._noise
        fused = fuse_burst(frames, self.config, timer, warn=not self._warned_single, defects=known, noise=noise)
        self.notice = self._refine_error
        steps = self._steps
        if steps and len(fused.used) > 1 and not self._refine_error:
            refiner = self._refiners[steps]
            with timer.stage(f"refine ({steps} step{'s' * (steps > 1)}, guard)"):
                fused.planes = refiner.refine(fused)
            self.notice = refiner.last_note
        self.psnr_vs_truth = _planes_psnr(fused, ref)
        if len(fused.used) == 1:
            self._warned_single = True
        elif len(fused.used) == self.frames_needed:
            self._calls += 1
            if fused.defects is not None:
                self._defects = fused.defects
            self._noise, self._noise_key = fused.noise_report, key
        self.last = fused
        cfg = self.config
        with timer.stage("finish"):
            before = finish_for_display(fused.ref_planes, ref.raw, fused.lens, cfg.finish, cfg.lens != "off",
                                        self._lens_cache)
            after = finish_for_display(fused.planes, ref.raw, fused.lens, cfg.finish, cfg.lens == "display",
                                       self._lens_cache)
        return before, after

    def take_report(self) -> tuple[str | None, float | None]:
        return self.notice, self.psnr_vs_truth

    def close(self) -> None:
        self._lens_cache.clear()
        self._refiners.clear()
        self.last = None


def _planes_psnr(fused: FusedBurst, ref: Frame) -> float | None:
    """Gamma PSNR (dB) of the output planes against the reference's clean planes, where the source
    knows them (the simulated Bayer camera's ground truth), else None."""
    truth = ref.truth
    if truth is None or truth.clean.shape != ref.pixels.shape:
        return None
    clean = normalise(truth.clean, ref.raw)
    out = np.clip(fused.planes, 0.0, 1.0) ** (1 / 2.2)
    mse = float(np.mean((out - np.clip(clean, 0.0, 1.0) ** (1 / 2.2)) ** 2))
    return 10.0 * float(np.log10(1.0 / mse)) if mse > 0 else float("inf")
