"""`python -m trainers.export_refine`: the burst refinement's trained weights -> ONNX graphs + manifest.

    burst_raw_encoder    planes (1, 4, H, W) -> latent (1, 16, H/8, W/8), scaled to unit spread
    burst_raw_decoder    latent, merged planes -> planes (the merge plus the decoder's residual)
    burst_teacher_step   z_t, z_merge, cond, t -> z0 estimate: one step of the diffusion teacher,
                         which the engine's offline sampler calls once per step
    burst_regressor      merged planes, cond -> planes: the whole regressor control in one graph
                         (encoder, network at t = 1, its own decoder)
    burst_consistency_K  merged planes, cond -> planes: the consistency student's K-step sample
                         (K = 1, 2, 4) in one graph each, so ONNX Runtime runs one session a frame

H and W are dynamic (multiples of 8). The per-sample scalars the network takes are computed inside
the graphs from the conditioning maps (refine_training.globals_from), so the engine feeds maps only.
Each graph is written to a temporary file and renamed; manifest entries carry sha256, the command,
the data and the measured quality, and the sampler's constants (latent scale, kappa).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from capture.atomic import atomic_output
from engine.manifest import WEIGHTS_DIR, TensorSpec, entry_for_file, upsert_entry
from trainers.models.latent_unet import C_MAPS, LatentUNet
from trainers.models.raw_vae import LATENT, RawDecoder, RawVAE
from trainers.refine_training import globals_from, load_checkpoint, load_weights

OPSET = 17
REPO = Path(__file__).resolve().parents[1]


class EncoderGraph(nn.Module):
    def __init__(self, vae: RawVAE):
        super().__init__()
        self.encoder, self.scale = vae.encoder, float(vae.scale)

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        return self.encoder(planes)[:, :LATENT] * self.scale


class DecoderGraph(nn.Module):
    def __init__(self, decoder: RawDecoder, scale: float):
        super().__init__()
        self.decoder, self.scale = decoder, scale

    def forward(self, latent: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent / self.scale, merged)


class StepGraph(nn.Module):
    def __init__(self, unet: LatentUNet):
        super().__init__()
        self.unet = unet

    def forward(self, z_t, z_merge, cond, t):
        return self.unet(z_t, z_merge, cond, t, globals_from(cond))


class RegressorGraph(nn.Module):
    def __init__(self, vae: RawVAE, unet: LatentUNet, decoder: RawDecoder):
        super().__init__()
        self.encode, self.unet, self.decode = EncoderGraph(vae), unet, DecoderGraph(decoder, float(vae.scale))

    def forward(self, merged: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        zm = self.encode(merged)
        t = torch.ones(zm.shape[0], dtype=zm.dtype)
        return self.decode(self.unet(zm, zm, cond, t, globals_from(cond)), merged)


class ConsistencyGraph(nn.Module):
    """The whole k-step consistency refinement in one graph: encoder, k evaluations of the
    consistency function (trainers.train_consistency.multistep), decoder over the merge."""

    def __init__(self, vae: RawVAE, student: LatentUNet, k: int):
        super().__init__()
        self.encode, self.student, self.k = EncoderGraph(vae), student, k
        self.decode = DecoderGraph(vae.decoder, float(vae.scale))

    def forward(self, merged: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        from trainers.train_consistency import multistep

        zm = self.encode(merged)
        return self.decode(multistep(self.student, zm, cond, globals_from(cond), self.k), merged)


def planes_spec(name: str) -> TensorSpec:
    return TensorSpec(name, "float32", [1, 4, "H", "W"], "NCHW")


def latent_spec(name: str, channels: int = LATENT) -> TensorSpec:
    return TensorSpec(name, "float32", [1, channels, "H/8", "W/8"], "NCHW")


def export_graph(module: nn.Module, inputs: dict[str, torch.Tensor], output: str, path: Path,
                 dynamic: dict[str, dict[int, str]]) -> Path:
    """torch.onnx.export (TorchScript exporter, dynamic axes) into a temporary file, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, torch.no_grad():
        torch.onnx.export(module.eval(), tuple(inputs.values()), str(tmp), input_names=list(inputs),
                          output_names=[output], opset_version=OPSET, dynamic_axes=dynamic, dynamo=False)
    return path


def export_all(vae_path: Path, teacher_path: Path | None, regressor_path: Path | None, weights_dir: Path,
               quality: dict | None = None, training: dict | None = None,
               consistency_path: Path | None = None) -> list[str]:
    """Write the graphs whose weights are given into weights_dir and the manifest; returns their names."""
    vae_state = load_checkpoint(vae_path, "raw_vae_weights")
    vae = RawVAE()
    load_weights(vae, vae_state["model"], vae_path)
    vae.eval()
    h, w = 64, 96
    planes, cond = torch.rand(1, 4, h, w) * 0.5, torch.rand(1, C_MAPS, h // 8, w // 8) * 0.1
    latent = torch.randn(1, LATENT, h // 8, w // 8)
    dyn_planes, dyn_latent = {2: "H", 3: "W"}, {2: "H/8", 3: "W/8"}
    training = dict(training or {})
    quality = quality or {}
    common = {"latent_scale": float(vae.scale)}
    written = []

    def register(name: str, path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], description: str,
                 extra: dict) -> None:
        upsert_entry(entry_for_file(name, path, weights_dir, kind="burst_refine", scale=1, inputs=inputs,
                                    outputs=outputs, description=description,
                                    training={**training, **common, **extra}, quality=quality.get(name, {})),
                     weights_dir)
        written.append(name)

    path = export_graph(EncoderGraph(vae), {"planes": planes}, "latent", weights_dir / "burst_raw_encoder.onnx",
                        {"planes": dyn_planes, "latent": dyn_latent})
    register("burst_raw_encoder", path, [planes_spec("planes")], [latent_spec("latent")],
             "RAW autoencoder's encoder: packed planes to a 16-channel latent at 1/8 (scaled to unit spread)",
             {"weights": str(vae_path.relative_to(REPO)) if vae_path.is_relative_to(REPO) else str(vae_path)})
    path = export_graph(DecoderGraph(vae.decoder, float(vae.scale)), {"latent": latent, "merged": planes}, "planes",
                        weights_dir / "burst_raw_decoder.onnx",
                        {"latent": dyn_latent, "merged": dyn_planes, "planes": dyn_planes})
    register("burst_raw_decoder", path, [latent_spec("latent"), planes_spec("merged")], [planes_spec("planes")],
             "RAW autoencoder's decoder: a latent and the merged planes to planes (the merge plus a residual)", {})
    if teacher_path is not None:
        state = load_checkpoint(teacher_path, "latent_teacher_weights")
        unet = LatentUNet()
        load_weights(unet, state["model"], teacher_path)
        t = torch.full((1,), 0.5)
        path = export_graph(StepGraph(unet), {"z_t": latent, "z_merge": latent, "cond": cond, "t": t}, "z0",
                            weights_dir / "burst_teacher_step.onnx",
                            {"z_t": dyn_latent, "z_merge": dyn_latent, "cond": dyn_latent, "z0": dyn_latent})
        register("burst_teacher_step", path,
                 [latent_spec("z_t"), latent_spec("z_merge"), latent_spec("cond", C_MAPS), TensorSpec("t", "float32", [1], "N")],
                 [latent_spec("z0")],
                 "latent diffusion teacher (ResShift process towards the merge's latent): one denoising step",
                 {"kappa": float(state["kappa"]), "train_steps": int(state["step"]),
                  "train_minutes": round(float(state["seconds"]) / 60, 1)})
    if regressor_path is not None:
        state = load_checkpoint(regressor_path, "latent_regressor_weights")
        unet = LatentUNet()
        load_weights(unet, state["model"], regressor_path)
        decoder = RawVAE().decoder
        load_weights(decoder, state["decoder"], regressor_path)
        path = export_graph(RegressorGraph(vae, unet, decoder), {"merged": planes, "cond": cond}, "planes",
                            weights_dir / "burst_regressor.onnx",
                            {"merged": dyn_planes, "cond": dyn_latent, "planes": dyn_planes})
        register("burst_regressor", path, [planes_spec("merged"), latent_spec("cond", C_MAPS)], [planes_spec("planes")],
                 "the regressor control: the teacher's network and decoder trained as a one-pass regressor on the "
                 "same data for the same time (encoder, network at t = 1 from the merge, decoder, one graph)",
                 {"train_steps": int(state["step"]), "train_minutes": round(float(state["seconds"]) / 60, 1)})
    if consistency_path is not None:
        from trainers.train_consistency import STEP_COUNTS

        state = load_checkpoint(consistency_path, "latent_consistency_weights")
        student = LatentUNet()
        load_weights(student, state["model"], consistency_path)
        for k in STEP_COUNTS:
            path = export_graph(ConsistencyGraph(vae, student, k), {"merged": planes, "cond": cond}, "planes",
                                weights_dir / f"burst_consistency_{k}.onnx",
                                {"merged": dyn_planes, "cond": dyn_latent, "planes": dyn_planes})
            register(f"burst_consistency_{k}", path, [planes_spec("merged"), latent_spec("cond", C_MAPS)],
                     [planes_spec("planes")],
                     f"the consistency student distilled from the teacher, {k} step{'s' * (k > 1)} in one graph "
                     f"(encoder, {k} evaluation{'s' * (k > 1)} of the consistency function, decoder)",
                     {"steps": k, "train_steps": int(state["step"]),
                      "train_minutes": round(float(state["seconds"]) / 60, 1)})
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainers.export_refine", description=__doc__.split("\n\n")[0])
    d = REPO / "weights" / "burst_refine"
    p.add_argument("--vae", type=Path, default=d / "raw_vae.pt")
    p.add_argument("--teacher", type=Path, default=d / "teacher.pt")
    p.add_argument("--regressor", type=Path, default=d / "regressor.pt")
    p.add_argument("--consistency", type=Path, default=d / "consistency.pt")
    p.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--data", default="trainers.burst_refine_data defaults (BSDS500 train+test, 6144 bursts)")
    args = p.parse_args(argv)
    training = {"command": "trainers/train_burst_refine.sh", "data": args.data}
    names = export_all(args.vae, args.teacher if args.teacher.exists() else None,
                       args.regressor if args.regressor.exists() else None, args.weights_dir, training=training,
                       consistency_path=args.consistency if args.consistency.exists() else None)
    print("exported " + ", ".join(names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
