"""`python -m trainers.train_student`: train StudentSR (or the ESPCN/FSRCNN baselines) with L1 loss.

Targets:
  --targets clean    clean photos (default: ../shared/data/BSDS500 train+test), degraded on the fly
                     by the webcam protocol of DESIGN.md (capture/degradations.py); the clean
                     full-resolution crop is the target.
  --targets teacher  pairs made by `python -m trainers.prepare_dataset RAW TEACHER`: the raw frame
                     is the input and the teacher's output the target (distillation).
  --distill-from CKPT  with either: a trained network's output on each input is a second target
                     (knowledge distillation, e.g. from the large reference StudentSR).
Validation every epoch: on BSDS500/val degraded with a fixed seed (clean targets), or on the
prepared _VALIDATION folders (teacher targets). One CSV row per epoch (--log-path): epoch, train
and validation L1, train and validation PSNR, learning rate, seconds.

Resumable: the checkpoint (--checkpoint, default beside the log) is written atomically after every
epoch with the model, optimiser, RNG state and the epoch (the learning rate is a function of the step); `--resume` continues from it
and appends to the log. At the end the model is exported to ONNX (and, for StudentSR, to int8),
and weights/manifest.json is updated with the training command, data and measured quality.

Under `torchrun --nproc_per_node N` it trains with DistributedDataParallel (gloo backend): each
process draws its own batches from a per-rank seed, gradients are averaged, rank 0 validates,
logs, checkpoints and exports.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainers import ddp
from trainers.distill import distillation_loss, load_distillation_teacher
from trainers.models.registry import build
from trainers.student_data import (DEFAULT_DATA, CleanBatches, PairBatches, TrainingDataError, clean_training_images,
                                   clean_validation_set, load_pairs, teacher_validation_set, to_tensor)

REPO = Path(__file__).resolve().parent.parent
LOG_FIELDS = ["epoch", "train_l1", "val_l1", "train_psnr", "val_psnr", "lr", "seconds"]


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "student_sr"
    targets: str = "clean"  # "clean" or "teacher"
    data: Path = DEFAULT_DATA  # clean: a folder with BSDS500/; teacher: the prepared RAW folder
    teacher_dir: Path | None = None  # teacher targets: the prepared TEACHER folder
    epochs: int = 20
    steps_per_epoch: int = 200
    batch: int = 16
    patch: int = 48  # input (LR) patch size; the target is scale x larger
    lr: float = 2e-3
    seed: int = 0
    val_images: int = 100
    val_crop: int = 256  # clean validation: centre crops of this (HR) size keep an epoch's check short
    threads: int | None = None
    # Knowledge distillation: a trained network's checkpoint whose output on each training input is
    # a second target, weighted distill_weight (the clean target gets the rest).
    distill_from: Path | None = None
    distill_weight: float = 0.5


# -- validation ------------------------------------------------------------------------------------

def psnr_t(out: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR (dB) of [0, 1] tensors after 8-bit rounding, as the engine's output is scored."""
    mse = F.mse_loss(torch.round(out.clamp(0, 1) * 255), torch.round(ref * 255)).item()
    return 99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse)


def pad_for(net: nn.Module) -> int:
    return getattr(getattr(net, "cfg", None), "unshuffle", 1)


@torch.no_grad()
def evaluate(net: nn.Module, pairs: list[tuple[np.ndarray, np.ndarray]], scale: int) -> tuple[float, float]:
    """Mean L1 and PSNR over (lr, hr) uint8 pairs (inputs cropped to the network's multiple)."""
    net.eval()
    l1s, ps = [], []
    m = pad_for(net)
    for lr, hr in pairs:
        h, w = lr.shape[0] // m * m, lr.shape[1] // m * m
        x, y = to_tensor(lr[None, :h, :w]), to_tensor(hr[None, : h * scale, : w * scale])
        out = net(x)
        l1s.append(F.l1_loss(out, y).item())
        ps.append(psnr_t(out, y))
    net.train()
    return float(np.mean(l1s)), float(np.mean(ps))


# -- checkpoint and log ----------------------------------------------------------------------------

def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: a crash or a full disk mid-save leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def append_log(path: Path, row: dict) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        f.flush()
        os.fsync(f.fileno())


def truncate_log(path: Path, epochs_done: int) -> None:
    """Drop log rows after the checkpoint's epoch (a run killed between logging and checkpointing)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= epochs_done]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


# -- the loop --------------------------------------------------------------------------------------

def learning_rate(step: int, total: int, peak: float, warmup: float = 0.03) -> float:
    """Linear warm-up over the first `warmup` of the run, then cosine decay to 1% of `peak`. A pure
    function of the step, so a resumed (or lengthened) run continues on the right schedule."""
    w = max(1, int(total * warmup))
    if step < w:
        return peak * (step + 1) / w
    t = min(1.0, (step - w) / max(1, total - w))
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


BASELINE_WIDTHS = {"espcn": ("c1", "c2"), "fsrcnn": ("d", "s", "m")}


def arch_kwargs(arch: str, args: argparse.Namespace) -> dict:
    if arch == "student_sr":
        kwargs = dict(channels=args.channels, blocks=args.blocks)
        if args.head_kernel != 3:  # checkpoints made before the option have no key: a 3x3 head
            kwargs["head_kernel"] = args.head_kernel
        if args.base_blur > 0:  # likewise: no key means a plain bilinear base
            kwargs["base_blur_sigma"] = args.base_blur
        if args.unshuffle != 4:  # likewise: no key means the default 4
            kwargs["unshuffle"] = args.unshuffle
        if args.reparam:
            kwargs["reparam"] = True
        return kwargs
    if args.widths is None:  # the paper's widths; {} as in the checkpoints made before --widths
        return {}
    names = BASELINE_WIDTHS[arch]
    try:
        values = [int(v) for v in args.widths.split(",")]
    except ValueError:
        values = []
    if len(values) != len(names) or min(values) < 1:
        raise SystemExit(f"--widths for {arch} is {','.join(names)} (positive integers), got {args.widths!r}")
    return dict(zip(names, values))


def train(cfg: TrainConfig, model_kwargs: dict, log_path: Path, checkpoint: Path, resume: bool,
          printer=print) -> nn.Module:
    """Train and return the network (on rank 0 the best-validation weights). Writes log and checkpoint."""
    rank = ddp.start()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    scale = 2
    net = build(cfg.arch, **model_kwargs)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    total_steps = cfg.epochs * cfg.steps_per_epoch
    start_epoch, best = 0, {"val_psnr": -1.0, "state": None}
    rng = np.random.default_rng([cfg.seed, rank])

    if resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state.get("arch") != cfg.arch or state.get("model_kwargs") != model_kwargs:
            raise SystemExit(f"checkpoint {checkpoint} is for {state.get('arch')} {state.get('model_kwargs')}, "
                             f"not {cfg.arch} {model_kwargs}; pass the same architecture or another --checkpoint")
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, best = state["epoch"], state["best"]
        rng = np.random.default_rng([cfg.seed, rank, start_epoch])
        torch.set_rng_state(state["torch_rng"])
        if rank == 0:
            truncate_log(log_path, start_epoch)
            printer(f"resumed from {checkpoint} after epoch {start_epoch}")
    elif rank == 0 and log_path.exists():
        log_path.unlink()  # a fresh run starts a fresh log

    if cfg.targets == "clean":
        source = CleanBatches(clean_training_images(cfg.data), cfg.patch, scale, rng)
        val = clean_validation_set(cfg.data, cfg.val_images, cfg.val_crop, scale) if rank == 0 else []
    else:
        if cfg.teacher_dir is None:
            raise TrainingDataError("--targets teacher needs --teacher-dir (the prepared teacher folder)")
        source = PairBatches(load_pairs(cfg.data, cfg.teacher_dir, scale, cfg.patch), cfg.patch, scale, rng)
        val = teacher_validation_set(cfg.data, cfg.teacher_dir, scale) if rank == 0 else []

    teacher = load_distillation_teacher(cfg.distill_from) if cfg.distill_from else None
    for m in (pad_for(net), pad_for(teacher) if teacher is not None else 1):
        if cfg.patch % m:
            raise TrainingDataError(f"--patch {cfg.patch} is not a multiple of {m}, the pixel-unshuffle factor of the "
                                    f"network or its distillation teacher; pass a multiple of {m}")
    model = ddp.wrap(net)
    world_size = ddp.world_size()
    per_rank_batch = max(1, cfg.batch // world_size)
    net.train()
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.monotonic()
        l1_sum = psnr_sum = 0.0
        for i in range(cfg.steps_per_epoch):
            lr_now = learning_rate((epoch - 1) * cfg.steps_per_epoch + i, total_steps, cfg.lr)
            for group in opt.param_groups:
                group["lr"] = lr_now
            lr_b, hr_b = source.batch(per_rank_batch)
            out = model(lr_b)
            loss = clean_l1 = F.l1_loss(out, hr_b)
            if teacher is not None:
                loss = distillation_loss(out, lr_b, clean_l1, teacher, cfg.distill_weight)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}; the last good checkpoint "
                                         f"{checkpoint} is kept: resume with a lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            l1_sum += clean_l1.item()  # logged against the clean targets, distilled or not
            psnr_sum += psnr_t(out.detach(), hr_b)
        l1_sum, psnr_sum = ddp.mean_over_ranks([l1_sum, psnr_sum])  # the logged figures: every rank's batches
        if rank == 0:
            val_l1, val_psnr = evaluate(net, val, scale)
            row = dict(epoch=epoch, train_l1=l1_sum / cfg.steps_per_epoch, val_l1=val_l1,
                       train_psnr=psnr_sum / cfg.steps_per_epoch, val_psnr=val_psnr,
                       lr=lr_now, seconds=time.monotonic() - t0)
            if val_psnr > best["val_psnr"]:
                best = {"val_psnr": val_psnr, "epoch": epoch,
                        "state": {k: v.clone() for k, v in net.state_dict().items()}}
            append_log(log_path, row)
            save_checkpoint(checkpoint, dict(arch=cfg.arch, model_kwargs=model_kwargs, model=net.state_dict(),
                                             optimizer=opt.state_dict(), world_size=world_size,
                                             epoch=epoch, best=best, torch_rng=torch.get_rng_state()))
            printer(f"epoch {epoch}/{cfg.epochs} train L1 {row['train_l1']:.4f} PSNR {row['train_psnr']:.2f} | "
                    f"val L1 {val_l1:.4f} PSNR {val_psnr:.2f} | lr {row['lr']:.2e} | {row['seconds']:.0f} s")
    ddp.finish()
    if best.get("state") is not None:
        net.load_state_dict(best["state"])
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="student_sr", choices=["student_sr", "espcn", "fsrcnn"])
    p.add_argument("--name", default=None, help="model name in the manifest (default: the arch)")
    p.add_argument("--targets", default="clean", choices=["clean", "teacher"])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="clean: folder with BSDS500/ (default ../shared/data); teacher: the prepared RAW folder")
    p.add_argument("--teacher-dir", type=Path, default=None, help="teacher targets: the prepared TEACHER folder")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps-per-epoch", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=48)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--unshuffle", type=int, default=4, choices=(1, 2, 4),
                   help="StudentSR: pixel-unshuffle factor; the body runs on 1/u^2 of the input's pixels. 4 "
                        "(default) is the live budget; 2 and 1 make far larger networks for reference")
    p.add_argument("--reparam", action="store_true",
                   help="StudentSR: train each body convolution as parallel 3x3, 1x1, identity and 1x1->3x3 "
                        "branches, fused into one 3x3 for export (same run-time cost)")
    p.add_argument("--head-kernel", type=int, default=1, choices=(1, 3),
                   help="StudentSR: kernel of the head on the unshuffled input: 1 (default) reads each 4x4 "
                        "block alone, 3 its 3x3 neighbourhood of blocks (the first StudentSRs; 9x the head's "
                        "MACs, and it scored lower in the same 3,000 steps)")
    p.add_argument("--base-blur", type=float, default=0.0,
                   help="StudentSR: Gaussian sigma (input pixels) the input is blurred with before the bilinear "
                        "base the network corrects; 0 (default): plain bilinear. 0.8 scored +0.27 dB at the "
                        "middle noise level of the engine benchmark (trainers/train_live_models.sh uses it)")
    p.add_argument("--widths", default=None,
                   help="baseline widths other than the paper's: ESPCN c1,c2 (64,32); FSRCNN d,s,m (56,12,4)")
    p.add_argument("--distill-from", type=Path, default=None,
                   help="a finished train_student checkpoint (e.g. the large reference StudentSR): its output on "
                        "each training input becomes a second L1 target (knowledge distillation)")
    p.add_argument("--distill-weight", type=float, default=0.5,
                   help="with --distill-from: the teacher target's share of the loss, the clean one's the rest")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-images", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--log-path", type=Path, required=True, help="per-epoch CSV log")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: beside the log, NAME.ckpt")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--weights-dir", type=Path, default=REPO / "weights", help="where the ONNX files and manifest go")
    p.add_argument("--no-export", action="store_true")
    args = p.parse_args(argv)
    name = args.name or args.arch
    if not 0 < args.distill_weight <= 1:
        raise SystemExit(f"--distill-weight is the teacher target's share of the loss, in (0, 1]; got {args.distill_weight}")
    cfg = TrainConfig(arch=args.arch, targets=args.targets, data=args.data, teacher_dir=args.teacher_dir,
                      epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch=args.batch, patch=args.patch,
                      lr=args.lr, seed=args.seed, val_images=args.val_images, threads=args.threads,
                      distill_from=args.distill_from, distill_weight=args.distill_weight)
    log_path = args.log_path.resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or log_path.with_name(f"{name}.ckpt")
    try:
        model_kwargs = arch_kwargs(args.arch, args)
        net = train(cfg, model_kwargs, log_path, checkpoint, args.resume)
    except TrainingDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0 or args.no_export:
        return 0
    command = "python -m trainers.train_student " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    val = (clean_validation_set(cfg.data, 32, cfg.val_crop) if cfg.targets == "clean"
           else teacher_validation_set(cfg.data, cfg.teacher_dir, 2))
    widths = model_kwargs if args.arch != "student_sr" else None
    from trainers.export import export_and_register  # onnx is loaded only by the process that exports

    for f in export_and_register(net, name, cfg, log_path, args.weights_dir, command, val, widths):
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
