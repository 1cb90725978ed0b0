"""`python -m trainers.train_teacher --task sr|deblur|denoise`: train our small CPU teachers.

The teacher pipeline (trainers/teacher.py) runs NAFSSR 4x -> NAFNet deblur -> NAFNet denoise. The
published checkpoints (NAFSSR-L, NAFNet width 64) are far too slow for this CPU, so we train the
narrower architectures of teacher.ARCHS ourselves, each on its own synthetic degradation of
BSDS500 train+test (trainers/teacher_tasks.py): bicubic/area 4x downscaling, motion blur in
linear light, Poisson-Gaussian noise in linear light over a range of levels.

L1 loss, Adam with warm-up and cosine decay (a pure function of the step), gradient clipping.
Every epoch: validation on BSDS500/val centre crops degraded with a fixed seed, one CSV row
(--log-path, default training_logs/teacher_<task>/log.csv: epoch, train_l1, val_l1, train_psnr,
val_psnr, lr, seconds), and an atomic checkpoint (--checkpoint, default runs/teacher_<task>.ckpt)
that `--resume` continues from. At the end the best-validation weights are written atomically in
the published BasicSR layout, {'params': state_dict}, to weights/teachers/<name>.pth (the names
teacher.py loads by default), measured on Kodak24 (and, for denoise, the real CC15 pairs), and
entered in weights/manifest.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.manifest import TensorSpec, entry_for_file, upsert_entry
from engine.metrics import psnr
from trainers.checkpoints import CheckpointMismatch, load_checkpoint
from trainers.models.nafnet import NAFNet
from trainers.models.nafssr import NAFSSR
from trainers.teacher import ARCHS, to_image, to_tensor
from trainers.teacher_tasks import TASK_NAMES, TaskSpec, cc15_pairs, check_task, degrade, kodak_task_set
from trainers.tiling import run_tiled
from trainers.student_data import DEFAULT_DATA, TrainingDataError, clean_training_images, validation_crops
from trainers.student_data import to_tensor as batch_to_tensor
from trainers.train_student import REPO, append_log, learning_rate, psnr_t, save_checkpoint, truncate_log

BORDER = 4  # pixels ignored on every side when scoring, as the engine benchmark does


@dataclass(frozen=True)
class TeacherTrainConfig:
    task: str
    data: Path = DEFAULT_DATA  # a folder with BSDS500/ (and Kodak24/, CC15_Nam/ for the final scores)
    arch: dict = field(default_factory=dict)  # constructor arguments; empty: teacher.ARCHS[task]
    epochs: int = 20
    steps_per_epoch: int = 50
    batch: int = 8
    patch: int = 128  # target (clean) patch size; the SR input is patch / 4
    lr: float = 1e-3
    grad_clip: float = 1.0
    seed: int = 0
    val_images: int = 20
    val_crop: int = 192
    threads: int | None = None

    @property
    def spec(self) -> TaskSpec:
        return check_task(self.task)

    @property
    def model_arch(self) -> dict:
        return dict(self.arch) if self.arch else dict(ARCHS[self.task])


# -- networks ---------------------------------------------------------------------------------------

def build_teacher(task: str, arch: dict | None = None) -> nn.Module:
    """The task's network (NAFSSR for sr, NAFNet otherwise) with `arch` or teacher.ARCHS[task]."""
    spec = check_task(task)
    arch = dict(arch) if arch else dict(ARCHS[task])
    return NAFSSR(**arch) if spec.network == "NAFSSR" else NAFNet(**arch)


def apply_teacher(net: nn.Module, task: str, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) [0, 1] -> (B, 3, sH, sW): NAFSSR gets the same view on both stereo branches."""
    return net.upscale_single(x) if task == "sr" else net(x)


@torch.no_grad()
def restore(net: nn.Module, task: str, bgr: np.ndarray, tile: int = 256, overlap: int = 16) -> np.ndarray:
    """(H, W, 3) uint8 BGR -> (sH, sW, 3) uint8 BGR through the teacher, in overlapping tiles."""
    scale = check_task(task).scale
    x = to_tensor(np.ascontiguousarray(bgr[..., ::-1]))
    if scale > 1:
        tile, overlap = tile // 2, overlap // 2  # SR tiles are measured on the input
    y = run_tiled(lambda t: apply_teacher(net, task, t), x, scale=scale, tile=tile, overlap=overlap)
    return np.ascontiguousarray(to_image(y)[..., ::-1])


def macs_per_input_pixel(net: nn.Module, task: str, size: int = 64) -> float:
    """Multiply-accumulates per input pixel of the convolutions and of NAFSSR's cross-view attention
    (elementwise work not counted), counted with forward hooks on a size x size input."""
    from trainers.models.nafssr import SCAM

    total = [0]

    def conv_hook(m: nn.Conv2d, inp, out):
        total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def scam_hook(m: nn.Module, inp, out):
        b, c, h, w = inp[0].shape
        total[0] += 3 * b * h * w * w * c  # attention, then the two weighted sums along each row

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else scam_hook)
             for m in net.modules() if isinstance(m, (nn.Conv2d, SCAM))]
    try:
        with torch.no_grad():
            apply_teacher(net.eval(), task, torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return total[0] / (size * size)


# -- data -------------------------------------------------------------------------------------------

class TaskBatches:
    """Random augmented crops of clean photos, degraded for the task on the fly:
    (input (B, 3, p/s, p/s), target (B, 3, p, p)) in [0, 1], s the task's scale."""

    def __init__(self, images: list[np.ndarray], task: str, patch: int, rng: np.random.Generator):
        scale = check_task(task).scale
        if patch % (2 * scale):
            raise ValueError(f"--patch {patch} must be a multiple of {2 * scale} for the {task} task")
        usable = [img for img in images if min(img.shape[:2]) >= patch]
        if not usable:
            raise TrainingDataError(f"none of the {len(images)} training images is at least {patch} px on its "
                                    f"short side; lower --patch")
        self.images, self.task, self.patch, self.rng = usable, task, patch, rng

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        p, rng = self.patch, self.rng
        inputs, targets = [], []
        for _ in range(n):
            img = self.images[int(rng.integers(len(self.images)))]
            y = int(rng.integers(0, img.shape[0] - p + 1))
            x = int(rng.integers(0, img.shape[1] - p + 1))
            clean = img[y:y + p, x:x + p]
            if rng.random() < 0.5:
                clean = clean[:, ::-1]
            if rng.random() < 0.5:
                clean = clean.transpose(1, 0, 2)
            clean = np.ascontiguousarray(clean)
            inputs.append(degrade(self.task, clean, rng))
            targets.append(clean)
        return batch_to_tensor(np.stack(inputs)), batch_to_tensor(np.stack(targets))


def validation_set(data: Path, task: str, n: int, crop: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(input, clean target)] uint8: centre crops of the first n BSDS500/val images, each degraded by
    a fixed draw (the same every epoch and every run)."""
    return [(degrade(task, clean, np.random.default_rng(10_000 + i)), clean)
            for i, clean in enumerate(validation_crops(data, n, crop))]


@torch.no_grad()
def evaluate(net: nn.Module, task: str, pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Mean L1 and PSNR (8-bit rounded, as the saved images are) over (input, target) uint8 pairs."""
    net.eval()
    l1s, ps = [], []
    for inp, target in pairs:
        out = apply_teacher(net, task, batch_to_tensor(inp[None]))
        y = batch_to_tensor(target[None])
        l1s.append(F.l1_loss(out, y).item())
        ps.append(psnr_t(out, y))
    net.train()
    return float(np.mean(l1s)), float(np.mean(ps))


# -- the loop ---------------------------------------------------------------------------------------

def save_published(net: nn.Module, path: Path) -> Path:
    """Write the weights as {'params': state_dict} (BasicSR's layout) atomically; returns path."""
    save_checkpoint(Path(path), {"params": {k: v.detach().clone() for k, v in net.state_dict().items()}})
    return Path(path)


def train(cfg: TeacherTrainConfig, log_path: Path, checkpoint: Path, resume: bool, printer=print) -> nn.Module:
    """Train and return the network with its best-validation weights. Writes the log and checkpoint.
    Raises CheckpointMismatch when --resume meets a checkpoint of another task or architecture."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    net = build_teacher(cfg.task, cfg.model_arch)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.9))
    total = cfg.epochs * cfg.steps_per_epoch
    start_epoch, best = 0, {"val_psnr": -1.0, "state": None}
    rng = np.random.default_rng(cfg.seed)
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state.get("task") != cfg.task:
            raise CheckpointMismatch(f"checkpoint {checkpoint} is for the {state.get('task')!r} task, not {cfg.task!r}; "
                                     f"pass --checkpoint for this task or drop --resume")
        try:
            load_checkpoint(net, state["model"])
        except CheckpointMismatch as exc:
            raise CheckpointMismatch(f"checkpoint {checkpoint} (arch {state.get('arch')}) does not fit arch "
                                     f"{cfg.model_arch}: {exc}") from None
        opt.load_state_dict(state["optimizer"])
        start_epoch, best = state["epoch"], state["best"]
        rng = np.random.default_rng([cfg.seed, start_epoch])
        torch.set_rng_state(state["torch_rng"])
        truncate_log(log_path, start_epoch)
        printer(f"resumed from {checkpoint} after epoch {start_epoch}")
    elif log_path.exists():
        log_path.unlink()  # a fresh run starts a fresh log

    source = TaskBatches(clean_training_images(cfg.data), cfg.task, cfg.patch, rng)
    val = validation_set(cfg.data, cfg.task, cfg.val_images, cfg.val_crop)
    scale = cfg.spec.scale
    net.train()
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.monotonic()
        l1_sum = psnr_sum = 0.0
        lr_now = cfg.lr
        for i in range(cfg.steps_per_epoch):
            lr_now = learning_rate((epoch - 1) * cfg.steps_per_epoch + i, total, cfg.lr)
            for group in opt.param_groups:
                group["lr"] = lr_now
            inp, target = source.batch(cfg.batch)
            out = apply_teacher(net, cfg.task, inp)
            loss = F.l1_loss(out, target)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}; the last good checkpoint "
                                         f"{checkpoint} is kept: resume with a lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            l1_sum += loss.item()
            psnr_sum += psnr_t(out.detach(), target)
        val_l1, val_psnr = evaluate(net, cfg.task, val)
        row = dict(epoch=epoch, train_l1=l1_sum / cfg.steps_per_epoch, val_l1=val_l1,
                   train_psnr=psnr_sum / cfg.steps_per_epoch, val_psnr=val_psnr, lr=lr_now,
                   seconds=time.monotonic() - t0)
        if val_psnr > best["val_psnr"]:
            best = {"val_psnr": val_psnr, "epoch": epoch, "state": {k: v.clone() for k, v in net.state_dict().items()}}
        append_log(log_path, row)
        save_checkpoint(checkpoint, dict(task=cfg.task, arch=cfg.model_arch, scale=scale, model=net.state_dict(),
                                         optimizer=opt.state_dict(), epoch=epoch, best=best,
                                         torch_rng=torch.get_rng_state()))
        printer(f"epoch {epoch}/{cfg.epochs} train L1 {row['train_l1']:.4f} PSNR {row['train_psnr']:.2f} | "
                f"val L1 {val_l1:.4f} PSNR {val_psnr:.2f} | lr {lr_now:.2e} | {row['seconds']:.0f} s")
    if best.get("state") is not None:
        net.load_state_dict(best["state"])
    return net.eval()


# -- scores and the manifest ------------------------------------------------------------------------

def baseline(task: str, inp: np.ndarray) -> np.ndarray:
    """The do-nothing reference for a task: bicubic 4x for sr, the degraded input itself otherwise."""
    from trainers.teacher_tasks import bicubic_up

    return bicubic_up(inp, 4) if task == "sr" else inp


def quality(net: nn.Module, task: str, data: Path, printer=print) -> dict:
    """Mean PSNR (RGB, 8-bit, 4 px border) of the teacher and of the do-nothing baseline on Kodak24
    (and the CC15 real pairs for denoise). Sets that are missing are left out with a warning."""
    sets = {}
    try:
        sets["kodak24"] = kodak_task_set(data, task)
    except FileNotFoundError as exc:
        printer(f"warning: no Kodak24 score: {exc}")
    if task == "denoise":
        try:
            sets["cc15"] = cc15_pairs(data)
        except FileNotFoundError as exc:
            printer(f"warning: no CC15 score: {exc}")
    base_name = {"sr": "bicubic", "deblur": "blurred", "denoise": "noisy"}[task]
    protocol = {"sr": "Kodak24 downscaled 4x by antialiased bicubic",
                "deblur": "Kodak24 with seeded straight motion blur of 4-12 px in linear light, read noise 1e-3",
                "denoise": "Kodak24 with Poisson-Gaussian noise in linear light at the webcam 'mid' level "
                           "(sigma_read 10^-1.8, sigma_shot 10^-2.2); CC15: real camera noise vs the mean of 500 shots"}[task]
    q: dict = {"protocol": protocol + "; PSNR on RGB, 8-bit, 4 px border ignored"}
    for set_name, items in sets.items():
        t, b = [], []
        for _, inp, clean in items:
            out = restore(net, task, inp)
            t.append(psnr(out[..., ::-1], clean[..., ::-1], BORDER))
            b.append(psnr(baseline(task, inp)[..., ::-1], clean[..., ::-1], BORDER))
        q[f"{set_name}_psnr"] = round(float(np.mean(t)), 3)
        q[f"{set_name}_{base_name}_psnr"] = round(float(np.mean(b)), 3)
        printer(f"{set_name}: teacher {q[f'{set_name}_psnr']:.2f} dB, {base_name} {q[f'{set_name}_{base_name}_psnr']:.2f} dB")
    return q


def register_teacher(net: nn.Module, cfg: TeacherTrainConfig, path: Path, weights_dir: Path, log_path: Path,
                     command: str, q: dict) -> None:
    """Add or replace the teacher's manifest entry (float32 NCHW tensors in [0, 1], RGB)."""
    spec = cfg.spec
    s = spec.scale
    out_shape = [1, 3, f"{s}*H" if s > 1 else "H", f"{s}*W" if s > 1 else "W"]
    rel_log = os.path.relpath(log_path, REPO) if log_path.is_relative_to(REPO) else str(log_path)
    training = {"command": command, "data": f"{cfg.data}/BSDS500 train+test (400 images), validated on BSDS500/val",
                "degradation": spec.description, "arch": {"network": spec.network, **cfg.model_arch},
                "epochs": cfg.epochs, "steps": cfg.epochs * cfg.steps_per_epoch, "batch": cfg.batch,
                "patch": cfg.patch, "loss": "L1", "lr": cfg.lr, "log": rel_log,
                "layout": "BasicSR {'params': state_dict}"}
    entry = entry_for_file(
        spec.model_name, path, weights_dir, kind=spec.kind, scale=s,
        inputs=[TensorSpec("input", "float32", [1, 3, "H", "W"], "NCHW")],
        outputs=[TensorSpec("output", "float32", out_shape, "NCHW")],
        description=spec.description + "; RGB in [0, 1]", macs_per_input_pixel=round(macs_per_input_pixel(net, cfg.task)),
        training=training, quality=q,
    )
    upsert_entry(entry, weights_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=TASK_NAMES)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with BSDS500/, Kodak24/, CC15_Nam/")
    p.add_argument("--arch", default=None, help="JSON dict of constructor arguments (default: teacher.ARCHS[task])")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=128, help="clean target patch size (the SR input is a quarter)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-images", type=int, default=20)
    p.add_argument("--val-crop", type=int, default=192)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--log-path", type=Path, default=None, help="default: training_logs/teacher_<task>/log.csv")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: runs/teacher_<task>.ckpt")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--weights-dir", type=Path, default=REPO / "weights",
                   help="the teacher goes to WEIGHTS_DIR/teachers/<name>.pth, its entry to WEIGHTS_DIR/manifest.json")
    p.add_argument("--no-export", action="store_true", help="train only; write no weights file or manifest entry")
    args = p.parse_args(argv)
    try:
        arch = json.loads(args.arch) if args.arch else {}
    except json.JSONDecodeError as exc:
        print(f"error: --arch {args.arch!r} is not a JSON dict: {exc}", file=sys.stderr)
        return 2
    cfg = TeacherTrainConfig(task=args.task, data=args.data, arch=arch, epochs=args.epochs,
                             steps_per_epoch=args.steps_per_epoch, batch=args.batch, patch=args.patch, lr=args.lr,
                             grad_clip=args.grad_clip, seed=args.seed, val_images=args.val_images,
                             val_crop=args.val_crop, threads=args.threads)
    log_path = (args.log_path or REPO / "training_logs" / f"teacher_{args.task}" / "log.csv").resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or REPO / "runs" / f"teacher_{args.task}.ckpt"
    try:
        build_teacher(cfg.task, cfg.model_arch)
    except TypeError as exc:
        print(f"error: --arch {cfg.model_arch} does not build a {cfg.spec.network}: {exc}", file=sys.stderr)
        return 2
    try:
        net = train(cfg, log_path, checkpoint, args.resume)
    except (TrainingDataError, CheckpointMismatch, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full while logging or checkpointing: what was written stays
        print(f"error: {exc}. The log {log_path} and the last complete checkpoint {checkpoint} are intact; "
              f"free some space and re-run with --resume.", file=sys.stderr)
        return 1
    if args.no_export:
        return 0
    command = "python -m trainers.train_teacher " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    path = args.weights_dir / "teachers" / cfg.spec.checkpoint
    try:
        save_published(net, path)
        q = quality(net, cfg.task, cfg.data)
        register_teacher(net, cfg, path, args.weights_dir, log_path, command, q)
    except OSError as exc:
        print(f"error: could not write the teacher: {exc}. The checkpoint {checkpoint} is intact; free some space "
              f"and re-run with --resume (it will only export).", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and its manifest entry {cfg.spec.model_name!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
