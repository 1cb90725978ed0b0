"""`python -m trainers.train_diffusion`: the latent diffusion teacher of the burst refinement, and the
direct regressor it must beat (`--objective regress`), on the same data, for the same wall time.

The forward process shifts the clean latent towards the merge's (ResShift, Yue et al. 2023), so
restoration starts from the merge, not from pure noise:

    z_t = z_0 + eta(t) (z_merge - z_0) + kappa sqrt(eta(t)) eps,   eps ~ N(0, I),   t in [0, 1]
    eta(t) = sin^2(pi t / 2)                        (a cosine schedule: eta(0) = 0, eta(1) = 1)

so z_1 = z_merge + kappa eps, and the network F (trainers/models/latent_unet.LatentUNet, conditioned
on z_merge, the conditioning maps and the noise scalars) predicts z_0. Training: t uniform in
(0, 1] (continuous time), loss = |F(z_t) - z_0|^2 + the pixel restoration loss of the frozen
decoder's output from F(z_t). Sampling (`sample`, offline, 50 steps by default) is deterministic
given its start z_1 (DDIM's rule for this process: the noise the network implies is kept and
rescaled),

    z0_hat = F(z_t, t)        eps_hat = (z_t - z0_hat - eta(t) (z_merge - z0_hat)) / (kappa sqrt(eta(t)))
    z_s = z0_hat + eta(s) (z_merge - z0_hat) + kappa sqrt(eta(s)) eps_hat      for the next time s < t.

kappa is KAPPA_RESIDUALS times the RMS of z_merge - z_0 over the training data (measured when a
run starts, kept in its checkpoint and weights): the start point's noise then covers what the merge
got wrong by a margin, without drowning it (the latent's overall spread is 1 by the VAE's scale).

The regressor is the same network (and a copy of the decoder, trained with it) evaluated once at
t = 1 from z_1 = z_merge (no noise), trained with L1 to the clean latent and the pixel loss. A
diffusion sample is a posterior sample: its expected squared error is up to twice the regressor's,
so the teacher's value is detail at equal fidelity, not PSNR alone.

Both write --weights (EMA U-Net, and the regressor's decoder) at the end; resumable like
trainers.train_raw_vae (--checkpoint, --time-limit).
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
from trainers.models.raw_vae import RawVAE
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

KAPPA_RESIDUALS = 2.0
REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = ("diffusion", "regress")


def eta(t: torch.Tensor) -> torch.Tensor:
    return torch.sin(0.5 * math.pi * t) ** 2


def diffuse(z0: torch.Tensor, zm: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, kappa: float) -> torch.Tensor:
    e = eta(t).view(-1, 1, 1, 1)
    return z0 + e * (zm - z0) + kappa * e.sqrt() * eps


@torch.no_grad()
def sample(unet: LatentUNet, zm: torch.Tensor, cond: torch.Tensor, g: torch.Tensor, steps: int,
           start_noise: torch.Tensor | None, kappa: float) -> torch.Tensor:
    """The deterministic sampler of the module docstring from z_1 = z_merge + kappa start_noise
    (None: no noise) in `steps` equal steps of t. Returns z_0."""
    ts = torch.linspace(1.0, 0.0, steps + 1)
    z = zm + (kappa * start_noise if start_noise is not None else 0.0)
    for i in range(steps):
        t = ts[i].expand(zm.shape[0])
        z0 = unet(z, zm, cond, t, g)
        e_t, e_s = eta(ts[i]), eta(ts[i + 1])
        eps = (z - z0 - e_t * (zm - z0)) / (kappa * e_t.sqrt().clamp_min(1e-4))
        z = z0 + e_s * (zm - z0) + kappa * e_s.sqrt() * eps
    return z


def load_vae(path: Path) -> RawVAE:
    state = load_checkpoint(path, "raw_vae_weights")
    vae = RawVAE()
    load_weights(vae, state["model"], path)
    return vae.eval()


@torch.no_grad()
def encode_all(vae: RawVAE, data: RefineData, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_0, z_merge): the scaled latent means of every sample's clean and merged planes."""
    z0, zm = [], []
    for s in range(0, len(data), batch):
        clean, merged, _, _ = data.batch(np.arange(s, min(len(data), s + batch)))
        z0.append(vae.encode(clean)[0] * vae.scale)
        zm.append(vae.encode(merged)[0] * vae.scale)
    return torch.cat(z0), torch.cat(zm)


@torch.no_grad()
def evaluate(unet, decoder, scale, val: RefineData, zval, objective: str, steps: int, kappa: float,
             n: int = 64) -> dict:
    unet.eval()
    idx = np.arange(min(n, len(val)))
    clean, merged, cond, g = val.batch(idx)
    z0, zm = zval[0][idx], zval[1][idx]
    if objective == "regress":
        pred = unet(zm, zm, cond, torch.ones(len(idx)), g)
    else:
        gen = torch.Generator().manual_seed(0)
        pred = sample(unet, zm, cond, g, steps, torch.randn(zm.shape, generator=gen), kappa)
    out = decoder(pred / scale, merged)
    return {"val_l1": float(restoration_loss(out, clean, 0.0)), "val_psnr": psnr_gamma(out, clean),
            "val_merge_psnr": psnr_gamma(merged, clean), "val_latent_mse": float(F.mse_loss(pred, z0))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainers.train_diffusion", description=__doc__.split("\n\n")[0])
    p.add_argument("--objective", choices=OBJECTIVES, default="diffusion",
                   help="diffusion: the teacher; regress: the one-pass control on the same data and time")
    p.add_argument("--data", type=Path, default=DEFAULT_OUT, help="the burst_refine_data shards")
    p.add_argument("--vae", type=Path, default=REPO / "weights" / "burst_refine" / "raw_vae.pt")
    p.add_argument("--steps", type=int, default=20000, help="training steps at most (--time-limit may end it first)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--pixel-weight", type=float, default=1.0, help="weight of the decoded pixel loss")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-sample-steps", type=int, default=8, help="sampler steps of the teacher's periodic check")
    p.add_argument("--checkpoint", type=Path, default=None, help="default runs/<objective>.ckpt")
    p.add_argument("--log-path", type=Path, default=None, help="default training_logs/<objective>/log.csv")
    p.add_argument("--weights", type=Path, default=None, help="default weights/burst_refine/<teacher|regressor>.pt")
    p.add_argument("--time-limit", type=float, default=85.0, help="minutes this process trains before it saves and stops")
    p.add_argument("--budget", type=float, default=None,
                   help="minutes of training in all, across resumes; at the budget the run ends and writes its "
                        "weights (the teacher and the regressor get the same)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true")
    args = p.parse_args(argv)
    name = "teacher" if args.objective == "diffusion" else "regressor"
    args.checkpoint = args.checkpoint or REPO / "runs" / f"{name}.ckpt"
    args.log_path = args.log_path or REPO / "training_logs" / f"burst_{name}" / "log.csv"
    args.weights = args.weights or REPO / "weights" / "burst_refine" / f"{name}.pt"
    kind = f"latent_{name}"
    torch.set_num_threads(args.threads)
    try:
        vae = load_vae(args.vae)
        train, val = RefineData.load(args.data, "train"), RefineData.load(args.data, "val")
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for q in vae.parameters():
        q.requires_grad_(False)
    scale = float(vae.scale)
    print(f"encoding {len(train)} training and {len(val)} validation samples with {args.vae}", flush=True)
    ztrain, zval = encode_all(vae, train), encode_all(vae, val)
    kappa = KAPPA_RESIDUALS * float((ztrain[1] - ztrain[0]).pow(2).mean().sqrt())
    torch.manual_seed(args.seed)
    unet = LatentUNet()
    decoder = vae.decoder
    params = list(unet.parameters())
    if args.objective == "regress":  # the control trains its own copy of the decoder with the network
        decoder = RawVAE().decoder
        decoder.load_state_dict(vae.decoder.state_dict())
        params += list(decoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    ema = Ema(unet, 0.999)
    ema_decoder = Ema(decoder, 0.999)
    sampler = Sampler(len(train), args.batch, args.seed)
    log = CsvLog(args.log_path, extra=("val_merge_psnr", "val_latent_mse"))
    run = Run(kind, args.checkpoint, log, {"model": unet, "ema": ema.model, "decoder": decoder,
                                           "ema_decoder": ema_decoder.model}, opt, sampler, args)
    try:
        kappa = run.resume(args.fresh).get("kappa", kappa)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"kappa {kappa:.4f} ({KAPPA_RESIDUALS} x the merge latent's RMS residual)", flush=True)
    limit = run.clock.before + 60 * args.time_limit
    budget = 60 * args.budget if args.budget else math.inf

    running, count = 0.0, 0
    unet.train()
    done = False
    while not done:
        for g_ in opt.param_groups:
            g_["lr"] = cosine_lr(run.step, args.steps, args.lr)
        idx = sampler.next()
        clean, merged, cond, g = train.batch(idx)
        z0, zm = ztrain[0][idx], ztrain[1][idx]
        if args.objective == "regress":
            pred = unet(zm, zm, cond, torch.ones(len(idx)), g)
            latent_loss = F.l1_loss(pred, z0)
        else:
            t = torch.rand(len(idx)).clamp_min(1e-3)
            pred = unet(diffuse(z0, zm, t, torch.randn_like(z0), kappa), zm, cond, t, g)
            latent_loss = F.mse_loss(pred, z0)
        loss = latent_loss + args.pixel_weight * restoration_loss(decoder(pred / scale, merged), clean)
        if not torch.isfinite(loss):
            print(f"step {run.step}: loss is {float(loss)}; stopping with the last checkpoint kept", file=sys.stderr)
            return 3
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(unet)
        ema_decoder.update(decoder)
        running, count, run.step = running + loss.item(), count + 1, run.step + 1
        done = run.step >= args.steps or run.clock.seconds() >= budget
        if run.step % args.eval_every == 0 or done:
            run.epoch += 1
            metrics = evaluate(ema.model, ema_decoder.model, scale, val, zval, args.objective, args.eval_sample_steps,
                               kappa)
            log.append({"epoch": run.epoch, "step": run.step, "train_l1": running / count, "train_psnr": float("nan"),
                        "lr": opt.param_groups[0]["lr"], "seconds": round(run.clock.seconds(), 1), **metrics})
            print(f"step {run.step}: train {running / count:.4f}, val {metrics['val_psnr']:.2f} dB (merge "
                  f"{metrics['val_merge_psnr']:.2f} dB), {run.clock.seconds() / 60:.1f} min", flush=True)
            running, count = 0.0, 0
            unet.train()
            run.save(kappa=kappa)
            if not done and run.clock.seconds() > limit:
                print(f"time limit reached at step {run.step}: checkpoint saved, run again to go on", flush=True)
                return 0
    args.weights.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.weights, {"kind": f"{kind}_weights", "model": ema.model.state_dict(),
                                   "decoder": ema_decoder.model.state_dict(), "scale": scale, "kappa": kappa,
                                   "step": run.step, "seconds": run.clock.seconds(), "objective": args.objective})
    print(f"wrote {args.weights} after {run.step} steps, {run.clock.seconds() / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
