"""`python -m trainers.teacher IN_DIR OUT_DIR`: the heavy offline teacher (seed 003, step 2).

Per image:  [temporal merge of neighbouring frames] -> NAFSSR 4x SR -> downscale to the target
size (default 2x the input) -> NAFNet deblur -> NAFNet denoise -> unsharp mask.
Each stage can be switched off and each checkpoint chosen (published BasicSR layout or ours).
Large folders: tiles with overlap bound memory, a thread pool keeps both cores busy, finished
outputs are skipped (resumable), outputs are written atomically, unreadable inputs are logged and
skipped, and a summary says how many images were done, skipped and failed.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import logging
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from capture.atomic import atomic_write_bytes
from trainers.checkpoints import load_checkpoint
from trainers.models.nafnet import NAFNet
from trainers.models.nafssr import NAFSSR
from trainers.tiling import run_tiled

log = logging.getLogger("eyefuse.teacher")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
TEACHER_DIR = Path(__file__).resolve().parent.parent / "weights" / "teachers"
# The architectures of our CPU-trained teachers (trainers/train_teacher.py), narrower and shallower
# than the published ones: each trains in about 15 minutes on 2 cores (NAFNet ~0.75 s, NAFSSR ~0.55 s
# per step of 8 96-px patches) and weighs under 2 MB. The NAFNets have three levels, not four: the
# fourth level held 70% of the weights (6-7 MB) for a receptive field the blur sizes here do not need.
ARCHS = {
    "sr": dict(up_scale=4, width=32, num_blks=8),
    "deblur": dict(width=16, middle_blk_num=2, enc_blk_nums=[1, 1, 2], dec_blk_nums=[1, 1, 1]),
    "denoise": dict(width=16, middle_blk_num=2, enc_blk_nums=[1, 1, 2], dec_blk_nums=[1, 1, 1]),
}
PUBLISHED_ARCHS = {  # for the real published checkpoints: pass e.g. --sr-arch published
    "sr": dict(up_scale=4, width=128, num_blks=128),
    "deblur": dict(width=64, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 28], dec_blk_nums=[1, 1, 1, 1]),
    "denoise": dict(width=64, middle_blk_num=12, enc_blk_nums=[2, 2, 4, 8], dec_blk_nums=[2, 2, 2, 2]),
}


@dataclass(frozen=True)
class TeacherConfig:
    sr_checkpoint: Path | None = TEACHER_DIR / "nafssr_sr4.pth"
    deblur_checkpoint: Path | None = TEACHER_DIR / "nafnet_deblur.pth"
    denoise_checkpoint: Path | None = TEACHER_DIR / "nafnet_denoise.pth"
    archs: dict = field(default_factory=lambda: dict(ARCHS))
    target: tuple[int, int] | None = None  # (width, height); None: 2x the input
    sharpen_amount: float = 0.5  # 0 switches sharpening off
    sharpen_radius: float = 1.0
    tile: int = 192
    overlap: int = 16
    workers: int = 2
    temporal_radius: int = 0  # merge this many neighbours on each side first (video captures)


@dataclass
class TeacherSummary:
    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0


def to_image(t: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float -> (H, W, 3) uint8, clipped and rounded."""
    return (t[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def unsharp(img: np.ndarray, amount: float, radius: float) -> np.ndarray:
    """(H, W, 3) uint8 -> the same sharpened by img + amount * (img - gaussian(img, radius))."""
    if amount <= 0:
        return img
    blur = cv2.GaussianBlur(img, (0, 0), radius)
    return cv2.addWeighted(img, 1 + amount, blur, -amount, 0)


def target_size(w: int, h: int, target: tuple[int, int] | None) -> tuple[int, int]:
    """Output (width, height): 2x the input by default; a given target keeps the input's aspect
    by fitting inside it."""
    if target is None:
        return 2 * w, 2 * h
    tw, th = target
    s = min(tw / w, th / h)
    return int(round(w * s)), int(round(h * s))


def temporal_merge(ref: np.ndarray, neighbours: list[np.ndarray], k_sigma: float = 3.0) -> np.ndarray:
    """(H, W, 3) uint8 reference + neighbours of the same size -> merged (H, W, 3) uint8.

    Each neighbour is aligned to the reference with DIS optical flow and warped; per pixel, the
    aligned values within k_sigma noise deviations of the reference are averaged (others rejected,
    so moving objects do not ghost). The noise is estimated from the reference (MAD of a Laplacian).
    """
    if not neighbours:
        return ref
    grey_ref = cv2.cvtColor(ref, cv2.COLOR_BGR2GRAY)
    sigma = 1.4826 * np.median(np.abs(cv2.Laplacian(grey_ref.astype(np.float32), cv2.CV_32F))) / np.sqrt(20) + 1.0
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    h, w = grey_ref.shape
    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), -1)
    acc = ref.astype(np.float32)
    count = np.ones((h, w, 1), np.float32)
    for nb in neighbours:
        flow = dis.calc(grey_ref, cv2.cvtColor(nb, cv2.COLOR_BGR2GRAY), None)
        warped = cv2.remap(nb, grid + flow, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        ok = (np.abs(warped - ref).max(axis=2, keepdims=True) < k_sigma * sigma * 2).astype(np.float32)
        acc += warped * ok
        count += ok
    return (acc / count + 0.5).clip(0, 255).astype(np.uint8)


class Teacher:
    """The loaded teacher networks. Each worker thread gets its own copy (modules are not shared
    across threads while running)."""

    def __init__(self, cfg: TeacherConfig):
        self.cfg = cfg
        self.sr = self._load(NAFSSR, cfg.archs["sr"], cfg.sr_checkpoint)
        self.deblur = self._load(NAFNet, cfg.archs["deblur"], cfg.deblur_checkpoint)
        self.denoise = self._load(NAFNet, cfg.archs["denoise"], cfg.denoise_checkpoint)

    @staticmethod
    def _load(cls, arch: dict, checkpoint: Path | None):
        if checkpoint is None:
            return None
        if not Path(checkpoint).exists():
            raise FileNotFoundError(f"teacher checkpoint {checkpoint} not found: train it with "
                                    f"`python -m trainers.train_teacher` or switch the stage off")
        return load_checkpoint(cls(**arch), checkpoint).eval()

    @torch.no_grad()
    def enhance(self, bgr: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 BGR -> teacher image at the target size, uint8 BGR."""
        cfg = self.cfg
        h, w = bgr.shape[:2]
        tw, th = target_size(w, h, cfg.target)
        x = to_tensor(np.ascontiguousarray(bgr[..., ::-1]))
        if self.sr is not None:
            x = run_tiled(self.sr.upscale_single, x, scale=4, tile=cfg.tile // 2, overlap=cfg.overlap // 2)
            img = to_image(x)
            x = to_tensor(cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA))
        else:
            x = to_tensor(cv2.resize(bgr[..., ::-1], (tw, th), interpolation=cv2.INTER_CUBIC))
        for net in (self.deblur, self.denoise):
            if net is not None:
                x = run_tiled(net, x, scale=1, tile=cfg.tile, overlap=cfg.overlap)
        out = to_image(x)[..., ::-1]
        return unsharp(np.ascontiguousarray(out), cfg.sharpen_amount, cfg.sharpen_radius)


def list_images(in_dir: Path) -> list[Path]:
    return sorted(p for p in in_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))


def run_teacher(in_dir: Path, out_dir: Path, cfg: TeacherConfig, progress: bool = True) -> TeacherSummary:
    """Process every image of in_dir into out_dir/<stem>.png; returns the summary."""
    paths = list_images(in_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = TeacherSummary()
    todo = []
    for i, p in enumerate(paths):
        out = out_dir / f"{p.stem}.png"
        if out.exists() and out.stat().st_size > 0:
            summary.skipped += 1
        else:
            todo.append((i, p, out))
    torch.set_num_threads(1)  # parallelism comes from the worker threads, one core each
    local = threading.local()
    lock = threading.Lock()

    def work(item):
        i, path, out = item
        if not hasattr(local, "teacher"):
            local.teacher = Teacher(cfg)
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot read {path} as an image")
        if cfg.temporal_radius:
            nbs = []
            for j in range(max(0, i - cfg.temporal_radius), min(len(paths), i + cfg.temporal_radius + 1)):
                nb = cv2.imread(str(paths[j]), cv2.IMREAD_COLOR) if j != i else None
                if nb is not None and nb.shape == img.shape:
                    nbs.append(nb)
            img = temporal_merge(img, nbs)
        ok, png = cv2.imencode(".png", local.teacher.enhance(img))
        if not ok:
            raise ValueError(f"cannot encode the teacher output for {path}")
        atomic_write_bytes(out, png.tobytes())

    Teacher(cfg)  # fail fast on a missing or mismatched checkpoint, before any thread starts
    with cf.ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
        futures = {pool.submit(work, item): item[1] for item in todo}
        for fut in tqdm(cf.as_completed(futures), total=len(futures), disable=not progress, desc="teacher"):
            path = futures[fut]
            try:
                fut.result()
                with lock:
                    summary.done += 1
            except OSError as exc:  # disk full: the outputs already written stay; stop here
                summary.failed[path.name] = str(exc)
                for f in futures:
                    f.cancel()
                log.error("stopping: %s (finished outputs are kept; re-run to resume)", exc)
                break
            except Exception as exc:
                summary.failed[path.name] = str(exc)
                log.warning("skipped %s: %s", path.name, exc)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Teacher pipeline: SR 4x -> downscale -> deblur -> denoise -> sharpen.")
    p.add_argument("in_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    for stage in ("sr", "deblur", "denoise"):
        p.add_argument(f"--{stage}-checkpoint", type=Path, default=getattr(TeacherConfig, f"{stage}_checkpoint"))
        p.add_argument(f"--no-{stage}", action="store_true", help=f"switch the {stage} stage off")
        p.add_argument(f"--{stage}-arch", default="ours", help="'ours' (CPU-trained widths), 'published', "
                       "or a JSON dict of constructor arguments")
    p.add_argument("--target", default=None, help="WIDTHxHEIGHT to fit the output in (e.g. 1280x1024); default 2x")
    p.add_argument("--sharpen-amount", type=float, default=0.5, help="0 switches sharpening off")
    p.add_argument("--sharpen-radius", type=float, default=1.0)
    p.add_argument("--tile", type=int, default=192)
    p.add_argument("--overlap", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--temporal", type=int, default=0, help="merge N neighbouring frames on each side first")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not args.in_dir.is_dir():
        print(f"error: {args.in_dir} is not a folder of images", file=sys.stderr)
        return 2
    archs = {}
    for stage in ("sr", "deblur", "denoise"):
        a = getattr(args, f"{stage}_arch")
        archs[stage] = ARCHS[stage] if a == "ours" else PUBLISHED_ARCHS[stage] if a == "published" else json.loads(a)
    target = tuple(int(v) for v in args.target.lower().split("x")) if args.target else None
    cfg = TeacherConfig(
        sr_checkpoint=None if args.no_sr else args.sr_checkpoint,
        deblur_checkpoint=None if args.no_deblur else args.deblur_checkpoint,
        denoise_checkpoint=None if args.no_denoise else args.denoise_checkpoint,
        archs=archs, target=target, sharpen_amount=args.sharpen_amount, sharpen_radius=args.sharpen_radius,
        tile=args.tile, overlap=args.overlap, workers=args.workers, temporal_radius=args.temporal,
    )
    try:
        s = run_teacher(args.in_dir, args.out_dir, cfg, progress=not args.no_progress)
    except (FileNotFoundError, Exception) as exc:  # checkpoint problems are reported before any work
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"done {s.done}, skipped {s.skipped} (already finished), failed {len(s.failed)}")
    for name, why in s.failed.items():
        print(f"  failed {name}: {why}", file=sys.stderr)
    return 1 if s.failed else 0


if __name__ == "__main__":
    sys.exit(main())
