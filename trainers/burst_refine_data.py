"""`python -m trainers.burst_refine_data --out DIR`: training data for the learned burst refinement.

Each sample is a burst synthesised from a BSDS500 train/test photo (never Kodak24, the benchmark)
by the SyntheticBurst/unprocess protocol (capture/burst_synthesis.py), at a noise level drawn
over the whole KPN range (log-uniform gain 1-8, the KPN read and shot levels interpolated in log),
with, for LENS_SHARE of the bursts, synthetic vignetting and lateral chromatic aberration applied to
every frame (engine/burst/lens.distort); then aligned and merged by our own burst path with the
true noise. A sample stores, as float16:

    clean    (4, C, C) the reference frame's noise-free planes (with the same lens aberrations:
             the refinement denoises, the lens stage corrects afterwards)
    merged   (4, C, C) the merged planes
    cond     (C_MAPS, C/8, C/8) the conditioning maps (engine/burst/refine_inputs.condition_maps)
    gain     ()  the KPN gain the noise was drawn at (for reports)

C = --crop / 2 (packed planes of a --crop mosaic). Samples go into shards of SHARD samples
(shard_NNNNN.npz) with a manifest; every sample's randomness comes from (seed, index), so a run
that is stopped resumes at the first missing shard and makes exactly what it would have.
Validation samples (--val-samples) come from BSDS500 val.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SHARD = 256
LENS_SHARE = 0.5
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_OUT = Path.home() / ".cache" / "eyefuse" / "burst_refine"


@dataclass(frozen=True)
class SampleSpec:
    crop: int = 256  # mosaic pixels (the packed planes are half that)
    frames: int = 8
    seed: int = 0


def kpn_noise(gain: float):
    """The KPN noise level at any gain in [1, 8]: log sigmas interpolated between the four levels."""
    from capture.burst_synthesis import KPN_GAINS
    from capture.degradations import NoiseLevel

    g = float(np.clip(gain, 1.0, 8.0))
    lo = 2 ** math.floor(math.log2(g))
    hi = min(8, lo * 2)
    t = 0.0 if hi == lo else (math.log2(g) - math.log2(lo))
    a, b = KPN_GAINS[int(lo)], KPN_GAINS[int(hi)]
    return NoiseLevel(sigma_read=math.exp((1 - t) * math.log(a.sigma_read) + t * math.log(b.sigma_read)),
                      sigma_shot=math.exp((1 - t) * math.log(a.sigma_shot) + t * math.log(b.sigma_shot)))


def random_lens(rng: np.random.Generator):
    """A lens with vignetting (30-70 % light at the corners) and lateral CA (red and blue magnified
    by up to +-0.3 % against green), or a perfect one (1 - LENS_SHARE of the time)."""
    from engine.burst.lens import IDENTITY_WARP, LensModel

    if rng.random() >= LENS_SHARE:
        return LensModel()
    k0 = float(rng.uniform(0.4, 2.3))  # the correction's gain at the corner: 1 + k0
    warp = [list(IDENTITY_WARP) for _ in range(3)]
    warp[0][0] = 1.0 + float(rng.uniform(-0.003, 0.003))
    warp[2][0] = 1.0 + float(rng.uniform(-0.003, 0.003))
    centre = (0.5 + float(rng.uniform(-0.05, 0.05)), 0.5 + float(rng.uniform(-0.05, 0.05)))
    return LensModel(vignette=(k0, 0.0, 0.0, 0.0, 0.0), warp=tuple(tuple(w) for w in warp), centre=centre,
                     source="user")


def make_sample(bgr: np.ndarray, index: int, spec: SampleSpec) -> dict[str, np.ndarray]:
    """One training sample (module docstring) from a photo, all randomness from (seed, index)."""
    from engine.burst.align import align
    from engine.burst.lens import distort
    from engine.burst.merge import merge
    from engine.burst.raw import NoiseModel, grey
    from engine.burst.refine_inputs import condition_maps
    from capture.burst_synthesis import (
        SYNTHETIC_BURST_MOTION,
        add_noise,
        landscape,
        random_motion,
        random_unprocessing,
        render_planes,
        unprocess,
    )

    rng = np.random.default_rng([spec.seed, index])
    img = landscape(bgr)
    margin = 16
    side = spec.crop + 2 * margin
    h, w = img.shape[:2]
    y0 = int(rng.integers(0, max(1, h - side + 1)))
    x0 = int(rng.integers(0, max(1, w - side + 1)))
    patch = img[y0 : y0 + side, x0 : x0 + side]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    gain = float(2 ** rng.uniform(0.0, 3.0))
    level = kpn_noise(gain)
    scene = unprocess(np.ascontiguousarray(patch), random_unprocessing(rng))
    motions = random_motion(spec.frames, rng, SYNTHETIC_BURST_MOTION)
    lens = random_lens(rng)
    c = spec.crop
    noisy = np.empty((spec.frames, 4, c // 2, c // 2), np.float32)
    clean0 = None
    for i in range(spec.frames):
        planes = render_planes(scene, motions[i], c, c)
        if not lens.is_identity:
            planes = np.clip(distort(planes, lens, "RGGB"), 0.0, 1.0)
        if i == 0:
            clean0 = planes
        noisy[i] = add_noise(planes, level, rng)
    nm = NoiseModel((level.sigma_shot**2,) * 4, (level.sigma_read**2,) * 4)
    alignment = align(grey(noisy), 0, nm)
    merged = merge(noisy, alignment, nm)
    confidence = alignment.confidence[1:].mean(axis=0)
    cond = condition_maps(merged, confidence, nm, spec.frames, lens, "RGGB")
    return {"clean": clean0.astype(np.float16), "merged": merged.astype(np.float16), "cond": cond.astype(np.float16),
            "gain": np.float32(gain)}


def photos(data: Path, split: str) -> list[tuple[str, np.ndarray]]:
    """BSDS500 photos: "train" = train + test (400), "val" = val (100). Unreadable files are skipped."""
    folders = ("train", "test") if split == "train" else ("val",)
    out = []
    for folder in folders:
        for p in sorted((data / "BSDS500" / folder).glob("*.jpg")):
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is not None:
                out.append((p.stem, img))
    if not out:
        raise SystemExit(f"no BSDS500 {split} photos under {data / 'BSDS500'}; pass --data with ../shared/data")
    return out


def write_split(out: Path, name: str, images, count: int, spec: SampleSpec, first_index: int) -> None:
    """Shards name_NNNNN.npz of `count` samples (photos taken round-robin), skipping those present."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    shards = math.ceil(count / SHARD)
    todo = [k for k in range(shards) if not (out / f"{name}_{k:05d}.npz").exists()]
    if not todo:
        print(f"{name}: {shards} shards already made in {out}")
        return
    t0 = time.monotonic()
    probe = make_sample(images[0][1], first_index, spec)
    per_sample = time.monotonic() - t0
    size = sum(v.nbytes for v in probe.values())
    left = sum(min(SHARD, count - k * SHARD) for k in todo)
    print(f"{name}: {left} samples to make in {len(todo)} shards, about {left * size / 2**30:.2f} GiB and "
          f"{left * per_sample / 60:.0f} min here (first sample {per_sample * 1e3:.0f} ms, warm-up included)",
          flush=True)
    bar = tqdm(total=left, desc=name, unit="burst", file=sys.stderr, mininterval=5.0)
    for k in todo:
        n = min(SHARD, count - k * SHARD)
        samples = []
        for j in range(n):
            index = first_index + k * SHARD + j
            samples.append(make_sample(images[index % len(images)][1], index, spec))
            bar.update(1)
        arrays = {key: np.stack([s[key] for s in samples]) for key in samples[0]}
        tmp = out / f".{name}_{k:05d}.tmp.npz"
        np.savez(tmp, **arrays)
        tmp.replace(out / f"{name}_{k:05d}.npz")  # a shard is there whole, or not at all
    bar.close()


def load_split(out: Path, name: str) -> dict[str, np.ndarray]:
    """Every shard of a split, concatenated (float16 stays float16)."""
    files = sorted(out.glob(f"{name}_*.npz"))
    if not files:
        raise FileNotFoundError(f"no {name} shards in {out}; make them with python -m trainers.burst_refine_data --out {out}")
    parts = [dict(np.load(f)) for f in files]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainers.burst_refine_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder (with BSDS500/)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"where the shards go (default {DEFAULT_OUT})")
    p.add_argument("--samples", type=int, default=6144, help="training samples (default 6144)")
    p.add_argument("--val-samples", type=int, default=256, help="validation samples, from BSDS500 val (default 256)")
    p.add_argument("--crop", type=int, default=256, help="mosaic crop side (default 256: a 16x16 latent)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.crop % 32:
        p.error(f"--crop must be a multiple of 32 (the latent is 1/16 of the mosaic), got {args.crop}")
    from engine.process import configure_process

    configure_process()
    spec = SampleSpec(args.crop, args.frames, args.seed)
    manifest = args.out / "manifest.json"
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("spec") != spec.__dict__:
            raise SystemExit(f"{args.out} holds samples made with {old.get('spec')}, not {spec.__dict__}: "
                             f"use another --out, or the same options")
    args.out.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"spec": spec.__dict__, "samples": args.samples, "val_samples": args.val_samples,
                                    "command": " ".join(sys.argv)}, indent=1))
    write_split(args.out, "val", photos(args.data, "val"), args.val_samples, spec, first_index=10**7)
    write_split(args.out, "train", photos(args.data, "train"), args.samples, spec, first_index=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
