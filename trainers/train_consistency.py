"""`python -m trainers.train_consistency --teacher-checkpoint weights/burst_refine/teacher.pt`: the
few-step consistency student of the burst refinement, distilled from the latent diffusion teacher.

The student f has the teacher's network and conditioning, parameterised so the boundary condition
holds exactly (the LCM form for our time t in [0, 1], where z_0 is the clean latent):

    f(z_t, t) = c_skip(t) z_t + c_out(t) F(z_t, t),   c_skip = sd^2 / ((T_SCALE t)^2 + sd^2),
    c_out = T_SCALE t / sqrt((T_SCALE t)^2 + sd^2),   sd = 0.5, T_SCALE = 10

so f(z_0, 0) = z_0, and away from 0 f is essentially F, the network's clean-latent estimate (the
student starts as the teacher). Training (consistency distillation, with LCM's skipping step): on
the teacher's GRID-point schedule, draw n, make z_{t_n} by the forward process
(trainers.train_diffusion.diffuse), take one deterministic step of the teacher's ODE from t_n to
t_{n-SKIP} (the DDIM rule of train_diffusion.sample), and pull the student's f(z_{t_n}, t_n)
towards an EMA copy's f(z_{t_{n-SKIP}}, t_{n-SKIP}) (mu = EMA_TARGET; pseudo-Huber loss), plus the
distillation loss the seed asks for: the student's estimate against the clean latent (L1) and,
through the frozen decoder, the clean planes (restoration_loss). Resumable like the other trainers.

Sampling with k steps (engine/burst/consistency.py, one ONNX graph per k): z = z_merge (start noise
zero: deterministic, so a live view does not flicker), x0 = f(z, 1); then for each next time tau,
re-noise to it without noise, z = x0 + eta(tau) (z_merge - x0), and x0 = f(z, tau).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trainers.burst_refine_data import DEFAULT_OUT
from trainers.models.latent_unet import LatentUNet
from trainers.refine_training import (
    CheckpointError,
    CsvLog,
    Ema,
    RefineData,
    Run,
    Sampler,
    cosine_lr,
    load_checkpoint,
    load_weights,
    psnr_gamma,
    restoration_loss,
    save_checkpoint,
)
from trainers.train_diffusion import diffuse, encode_all, eta, load_vae

SD = 0.5
T_SCALE = 10.0
GRID = 50  # the teacher's sampler grid
SKIP = 5  # LCM's skipping step: the teacher's ODE from t_n to t_{n - SKIP}
EMA_TARGET = 0.95
STEP_COUNTS = (1, 2, 4)
REPO = Path(__file__).resolve().parents[1]


def c_skip_out(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = T_SCALE * t
    return SD**2 / (s * s + SD**2), s / torch.sqrt(s * s + SD**2)


def consistency(net: LatentUNet, z: torch.Tensor, zm: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                g: torch.Tensor) -> torch.Tensor:
    """f(z_t, t): the boundary-exact consistency function around the network's clean-latent estimate."""
    skip, out = c_skip_out(t)
    return skip.view(-1, 1, 1, 1) * z + out.view(-1, 1, 1, 1) * net(z, zm, cond, t, g)


def step_times(k: int) -> list[float]:
    """The k times a k-step sample evaluates f at: 1, then evenly down the teacher's grid."""
    return [1.0 - i / k for i in range(k)]


def multistep(net: LatentUNet, zm: torch.Tensor, cond: torch.Tensor, g: torch.Tensor, k: int) -> torch.Tensor:
    """The k-step deterministic sample of the module docstring -> clean-latent estimate."""
    z = zm
    x0 = zm
    for i, tau in enumerate(step_times(k)):
        t = torch.full((zm.shape[0],), tau)
        if i:
            z = x0 + eta(t).view(-1, 1, 1, 1) * (zm - x0)
        x0 = consistency(net, z, zm, cond, t, g)
    return x0


@torch.no_grad()
def teacher_step(teacher: LatentUNet, z: torch.Tensor, zm, cond, t, s, g, kappa: float) -> torch.Tensor:
    """One deterministic step of the teacher's ODE from time t to time s < t (per sample)."""
    z0 = teacher(z, zm, cond, t, g)
    e_t, e_s = eta(t).view(-1, 1, 1, 1), eta(s).view(-1, 1, 1, 1)
    eps = (z - z0 - e_t * (zm - z0)) / (kappa * e_t.sqrt().clamp_min(1e-4))
    return z0 + e_s * (zm - z0) + kappa * e_s.sqrt() * eps


def pseudo_huber(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    c = 0.00054 * math.sqrt(a[0].numel())  # the consistency-models paper's c for its dimension, scaled
    return (torch.sqrt((a - b).pow(2).flatten(1).sum(1) + c * c) - c).mean()


@torch.no_grad()
def evaluate(net, decoder, scale, val: RefineData, zval, n: int = 64) -> dict:
    net.eval()
    idx = np.arange(min(n, len(val)))
    clean, merged, cond, g = val.batch(idx)
    out = {"val_merge_psnr": psnr_gamma(merged, clean)}
    x0 = {k: multistep(net, zval[1][idx], cond, g, k) for k in STEP_COUNTS}
    for k in STEP_COUNTS:
        out[f"val_psnr_{k}"] = psnr_gamma(decoder(x0[k] / scale, merged), clean)
    out["val_psnr"] = out["val_psnr_1"]
    out["val_l1"] = float(F.l1_loss(x0[1], zval[0][idx]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainers.train_consistency", description=__doc__.split("\n\n")[0])
    d = REPO / "weights" / "burst_refine"
    p.add_argument("--teacher-checkpoint", type=Path, default=d / "teacher.pt")
    p.add_argument("--vae", type=Path, default=d / "raw_vae.pt")
    p.add_argument("--data", type=Path, default=DEFAULT_OUT)
    p.add_argument("--num-steps", type=int, default=4, help="the most sampler steps the student is used with")
    p.add_argument("--steps", type=int, default=100000, help="training steps at most (--budget may end it first)")
    p.add_argument("--budget", type=float, default=None, help="minutes of training in all, across resumes")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--distill-weight", type=float, default=1.0, help="weight of the loss to the clean target")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--checkpoint", type=Path, default=REPO / "runs" / "consistency.ckpt")
    p.add_argument("--log-path", type=Path, default=REPO / "training_logs" / "burst_consistency" / "log.csv")
    p.add_argument("--weights", type=Path, default=d / "consistency.pt")
    p.add_argument("--time-limit", type=float, default=85.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true")
    args = p.parse_args(argv)
    kind = "latent_consistency"
    torch.set_num_threads(args.threads)
    try:
        vae = load_vae(args.vae)
        tstate = load_checkpoint(args.teacher_checkpoint, "latent_teacher_weights")
        teacher = LatentUNet()
        load_weights(teacher, tstate["model"], args.teacher_checkpoint)
        train, val = RefineData.load(args.data, "train"), RefineData.load(args.data, "val")
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    teacher.eval()
    for q in [*vae.parameters(), *teacher.parameters()]:
        q.requires_grad_(False)
    kappa, scale = float(tstate["kappa"]), float(vae.scale)
    ztrain, zval = encode_all(vae, train), encode_all(vae, val)
    torch.manual_seed(args.seed)
    student = LatentUNet()
    student.load_state_dict(teacher.state_dict())
    target = Ema(student, EMA_TARGET)  # the consistency target
    ema = Ema(student, 0.999)  # the weights exported
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=1e-4)
    sampler = Sampler(len(train), args.batch, args.seed)
    log = CsvLog(args.log_path, extra=("val_merge_psnr",) + tuple(f"val_psnr_{k}" for k in STEP_COUNTS))
    run = Run(kind, args.checkpoint, log, {"model": student, "target": target.model, "ema": ema.model}, opt,
              sampler, args)
    try:
        run.resume(args.fresh)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    limit = run.clock.before + 60 * args.time_limit
    budget = 60 * args.budget if args.budget else math.inf
    grid = torch.linspace(0.0, 1.0, GRID + 1)

    running, count, done = 0.0, 0, False
    student.train()
    while not done:
        for g_ in opt.param_groups:
            g_["lr"] = cosine_lr(run.step, args.steps, args.lr, warmup=100)
        idx = sampler.next()
        clean, merged, cond, g = train.batch(idx)
        z0, zm = ztrain[0][idx], ztrain[1][idx]
        n = torch.randint(SKIP, GRID + 1, (len(idx),))
        t, s = grid[n], grid[n - SKIP]
        z_t = diffuse(z0, zm, t, torch.randn_like(z0), kappa)
        z_s = teacher_step(teacher, z_t, zm, cond, t, s, g, kappa)
        with torch.no_grad():
            want = consistency(target.model, z_s, zm, cond, s, g)
        got = consistency(student, z_t, zm, cond, t, g)
        loss = pseudo_huber(got, want) + args.distill_weight * (
            F.l1_loss(got, z0) + restoration_loss(vae.decoder(got / scale, merged), clean))
        if not torch.isfinite(loss):
            print(f"step {run.step}: loss is {loss.item()}; stopping with the last checkpoint kept", file=sys.stderr)
            return 3
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        target.update(student)
        ema.update(student)
        running, count, run.step = running + loss.item(), count + 1, run.step + 1
        done = run.step >= args.steps or run.clock.seconds() >= budget
        if run.step % args.eval_every == 0 or done:
            run.epoch += 1
            metrics = evaluate(ema.model, vae.decoder, scale, val, zval)
            log.append({"epoch": run.epoch, "step": run.step, "train_l1": running / count, "train_psnr": float("nan"),
                        "lr": opt.param_groups[0]["lr"], "seconds": round(run.clock.seconds(), 1), **metrics})
            print(f"step {run.step}: train {running / count:.4f}, val " + ", ".join(
                f"{k} step {metrics[f'val_psnr_{k}']:.2f}" for k in STEP_COUNTS)
                + f" dB (merge {metrics['val_merge_psnr']:.2f}), {run.clock.seconds() / 60:.1f} min", flush=True)
            running, count = 0.0, 0
            student.train()
            run.save()
            if not done and run.clock.seconds() > limit:
                print(f"time limit reached at step {run.step}: checkpoint saved, run again to go on", flush=True)
                return 0
    args.weights.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.weights, {"kind": f"{kind}_weights", "model": ema.model.state_dict(), "scale": scale,
                                   "kappa": kappa, "step": run.step, "seconds": run.clock.seconds(),
                                   "num_steps": args.num_steps})
    print(f"wrote {args.weights} after {run.step} steps, {run.clock.seconds() / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
