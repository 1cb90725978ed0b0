"""`python -m trainers.train_raw_vae`: the RAW autoencoder of the learned burst refinement.

Trains trainers/models/raw_vae.RawVAE on trainers.burst_refine_data samples: the clean reference
planes through the encoder (a sampled latent) and the decoder, which also sees the merged planes;
loss = restoration_loss (L1 in a gamma-like space + 0.5 x L1 of its image gradients, the perceptual
term) + KL_WEIGHT x KL to a unit normal. Logged every --eval-every steps to --log-path (CSV and
plots): the validation reconstruction's gamma PSNR, i.e. the ceiling D(E(clean), merge) the
refinement could reach with a perfect latent, beside the merge's own. Resumable: a run picks up
its --checkpoint (model, optimiser, EMA, step, RNG and sampler state) and stops cleanly, saving,
after --time-limit minutes. At the end the EMA weights, with the latent's scale (1 / the spread
of the clean latents), go to --weights.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from trainers.burst_refine_data import DEFAULT_OUT
from trainers.models.raw_vae import RawVAE
from trainers.refine_training import (
    CheckpointError,
    CsvLog,
    Ema,
    RefineData,
    Run,
    Sampler,
    cosine_lr,
    psnr_gamma,
    restoration_loss,
    save_checkpoint,
)

KIND = "raw_vae"
KL_WEIGHT = 1e-6
REPO = Path(__file__).resolve().parents[1]


def kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()


@torch.no_grad()
def evaluate(model: RawVAE, val: RefineData, batch: int = 32) -> dict:
    model.eval()
    l1, ceiling, merge = [], [], []
    for s in range(0, len(val), batch):
        clean, merged, _, _ = val.batch(np.arange(s, min(len(val), s + batch)))
        out, _, _ = model(clean, merged, sample=False)
        l1.append(float(restoration_loss(out, clean, 0.0)) * clean.shape[0])
        ceiling.append(psnr_gamma(out, clean) * clean.shape[0])
        merge.append(psnr_gamma(merged, clean) * clean.shape[0])
    n = len(val)
    return {"val_l1": sum(l1) / n, "val_psnr": sum(ceiling) / n, "val_merge_psnr": sum(merge) / n}


@torch.no_grad()
def latent_scale(model: RawVAE, data: RefineData, n: int = 512) -> float:
    """1 / the standard deviation of the clean latents' means over n training samples."""
    idx = np.linspace(0, len(data) - 1, min(n, len(data))).astype(np.int64)
    means = [model.encode(data.batch(idx[s : s + 64])[0])[0] for s in range(0, len(idx), 64)]
    return float(1.0 / torch.cat(means).std().clamp_min(1e-6))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainers.train_raw_vae", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_OUT, help="the burst_refine_data shards")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--checkpoint", type=Path, default=REPO / "runs" / "raw_vae.ckpt")
    p.add_argument("--log-path", type=Path, default=REPO / "training_logs" / "raw_vae" / "log.csv")
    p.add_argument("--weights", type=Path, default=REPO / "weights" / "burst_refine" / "raw_vae.pt",
                   help="where the finished EMA weights go")
    p.add_argument("--time-limit", type=float, default=85.0, help="minutes this process trains before it saves and stops")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="ignore an existing --checkpoint and start again")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        train, val = RefineData.load(args.data, "train"), RefineData.load(args.data, "val")
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    model = RawVAE()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    ema = Ema(model, 0.999)
    sampler = Sampler(len(train), args.batch, args.seed)
    log = CsvLog(args.log_path, extra=("val_merge_psnr",))
    run = Run(KIND, args.checkpoint, log, {"model": model, "ema": ema.model}, opt, sampler, args)
    try:
        run.resume(args.fresh)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    limit = run.clock.before + 60 * args.time_limit

    running, count = 0.0, 0
    model.train()
    while run.step < args.steps:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(run.step, args.steps, args.lr)
        clean, merged, _, _ = train.batch(sampler.next())
        out, mean, logvar = model(clean, merged)
        loss = restoration_loss(out, clean) + KL_WEIGHT * kl(mean, logvar)
        if not torch.isfinite(loss):
            print(f"step {run.step}: loss is {float(loss)}; stopping with the last checkpoint kept", file=sys.stderr)
            return 3
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model)
        running, count, run.step = running + loss.item(), count + 1, run.step + 1
        if run.step % args.eval_every == 0 or run.step == args.steps:
            run.epoch += 1
            metrics = evaluate(ema.model, val)
            train_psnr = psnr_gamma(out.detach(), clean)
            log.append({"epoch": run.epoch, "step": run.step, "train_l1": running / count, "train_psnr": train_psnr,
                        "lr": opt.param_groups[0]["lr"], "seconds": round(run.clock.seconds(), 1), **metrics})
            print(f"step {run.step}/{args.steps}: train {running / count:.4f}, val ceiling {metrics['val_psnr']:.2f} "
                  f"dB (merge {metrics['val_merge_psnr']:.2f} dB), {run.clock.seconds() / 60:.1f} min", flush=True)
            running, count = 0.0, 0
            model.train()
            run.save()
            if run.clock.seconds() > limit and run.step < args.steps:
                print(f"time limit reached at step {run.step}: checkpoint saved, run again to go on", flush=True)
                return 0
    final = ema.model
    final.scale.fill_(latent_scale(final, train))
    args.weights.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.weights, {"kind": "raw_vae_weights", "model": final.state_dict(), "step": run.step,
                                   "metrics": evaluate(final, val)})
    print(f"wrote {args.weights} (latent scale {float(final.scale):.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
