"""The learned burst refinement, end to end at a tiny scale: data -> autoencoder -> teacher and
regressor -> ONNX -> the engine's BurstRefiner; and the ways it must refuse or fall back."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.burst.lens import LensModel
from engine.burst.raw import NoiseModel
from engine.burst.refine import BurstRefiner, RefineConfig, pad_to_latent
from engine.burst.refine_inputs import C_MAPS, condition_maps
from engine.manifest import WeightsError
from tests.burst_data import photo
from trainers.burst_refine_data import SampleSpec, load_split, make_sample, write_split
from trainers.models.latent_unet import LatentUNet
from trainers.models.raw_vae import RawVAE
from trainers.refine_training import CheckpointError, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
SPEC = SampleSpec(crop=64, frames=4, seed=1)


def test_a_sample_is_made_from_its_seed_and_index_alone():
    a, b = make_sample(photo(), 3, SPEC), make_sample(photo(), 3, SPEC)
    assert {k: v.shape for k, v in a.items()} == {"clean": (4, 32, 32), "merged": (4, 32, 32), "cond": (C_MAPS, 4, 4),
                                                  "gain": ()}
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["clean"], make_sample(photo(), 4, SPEC)["clean"])
    assert 1.0 <= float(a["gain"]) <= 8.0


def test_untrained_networks_return_the_merge():
    torch.manual_seed(0)
    clean, merged = torch.rand(2, 4, 32, 48), torch.rand(2, 4, 32, 48)
    vae = RawVAE()
    assert torch.equal(vae(clean, merged)[0], merged)
    z = torch.randn(2, 16, 4, 6)
    out = LatentUNet()(torch.randn_like(z), z, torch.rand(2, C_MAPS, 4, 6), torch.rand(2), torch.rand(2, 3))
    assert torch.equal(out, z)


def test_condition_maps_say_where_the_lens_darkens_and_shifts():
    merged = np.full((4, 64, 96), 0.2, np.float32)
    noise = NoiseModel((1e-3,) * 4, (1e-4,) * 4)
    plain = condition_maps(merged, np.ones((2, 3), np.float32), noise, 8, LensModel(), "RGGB")
    assert plain.shape == (C_MAPS, 8, 12) and np.allclose(plain[3], 1.0) and np.allclose(plain[4:], 0.0)
    assert plain[2, 0, 0] == pytest.approx(plain[1, 0, 0] / np.sqrt(8), rel=1e-5)
    lens = LensModel(vignette=(1.0, 0, 0, 0, 0), warp=((1.002, 0, 0, 0, 0, 0), (1, 0, 0, 0, 0, 0), (1, 0, 0, 0, 0, 0)))
    maps = condition_maps(merged, np.ones((2, 3), np.float32), noise, 8, lens, "RGGB")
    assert maps[3, 0, 0] < maps[3, 4, 6] <= 1.0  # darker at the corner than at the centre
    assert maps[4, 0, 0] > maps[4, 4, 5] >= 0 and np.allclose(maps[5], 0.0)  # red magnified outwards, blue not
    with pytest.raises(ValueError, match="multiples of 8"):
        condition_maps(merged[:, :60], np.ones((2, 3), np.float32), noise, 8, LensModel(), "RGGB")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny data, a few steps of each trainer, the graphs exported into a weights folder of their own."""
    from trainers import export_refine, train_diffusion, train_raw_vae

    root = tmp_path_factory.mktemp("refine")
    data = root / "data"
    images = [("astronaut", photo()), ("coffee", photo("coffee"))]
    write_split(data, "train", images, 16, SPEC, first_index=0)
    write_split(data, "val", images, 4, SPEC, first_index=100)
    common = ["--data", str(data), "--batch", "4", "--eval-every", "2", "--threads", "1"]
    assert train_raw_vae.main(common + ["--steps", "2", "--checkpoint", str(root / "vae.ckpt"), "--log-path",
                                        str(root / "vae" / "log.csv"), "--weights", str(root / "vae.pt")]) == 0
    # resumed: the same checkpoint goes on to step 4 and writes the weights
    assert train_raw_vae.main(common + ["--steps", "4", "--checkpoint", str(root / "vae.ckpt"), "--log-path",
                                        str(root / "vae" / "log.csv"), "--weights", str(root / "vae.pt")]) == 0
    for objective in ("diffusion", "regress"):
        assert train_diffusion.main(common + ["--objective", objective, "--vae", str(root / "vae.pt"), "--steps", "2",
                                              "--eval-sample-steps", "2", "--checkpoint", str(root / f"{objective}.ckpt"),
                                              "--log-path", str(root / objective / "log.csv"),
                                              "--weights", str(root / f"{objective}.pt")]) == 0
    from trainers import train_consistency

    assert train_consistency.main(common + ["--teacher-checkpoint", str(root / "diffusion.pt"), "--vae",
                                            str(root / "vae.pt"), "--steps", "2", "--checkpoint",
                                            str(root / "consistency.ckpt"), "--log-path",
                                            str(root / "consistency" / "log.csv"),
                                            "--weights", str(root / "consistency.pt")]) == 0
    weights = root / "weights"
    weights.mkdir()
    (weights / "manifest.json").write_text(json.dumps({"schema": 1, "models": {}}))
    names = export_refine.export_all(root / "vae.pt", root / "diffusion.pt", root / "regress.pt", weights,
                                     consistency_path=root / "consistency.pt")
    assert names == ["burst_raw_encoder", "burst_raw_decoder", "burst_teacher_step", "burst_regressor",
                     "burst_consistency_1", "burst_consistency_2", "burst_consistency_4"]
    return root


def test_the_vae_run_resumed_where_it_stopped(trained):
    rows = (trained / "vae" / "log.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["2", "4"]  # steps 2 (first run) and 4 (resumed), no repeat
    assert (trained / "vae" / "loss_plot.png").exists() and (trained / "vae" / "psnr_plot.png").exists()
    assert load_checkpoint(trained / "vae.ckpt", "raw_vae")["step"] == 4


@pytest.mark.parametrize("model", ["regressor", "teacher"])
def test_the_engine_refines_planes_of_any_size_as_torch_does(trained, model):
    from trainers.export_refine import DecoderGraph, EncoderGraph, RegressorGraph
    from trainers.refine_training import globals_from, load_weights
    from trainers.train_diffusion import sample

    refiner = BurstRefiner(RefineConfig(model, steps=3, guard=False), trained / "weights")
    rng = np.random.default_rng(0)
    merged = rng.random((4, 60, 90), dtype=np.float32) * 0.3  # not multiples of 8: padded and cropped back
    noise = NoiseModel((1e-3,) * 4, (1e-4,) * 4)
    out = refiner.refine_planes(merged, np.ones((3, 4), np.float32), noise, 8, LensModel(), "RGGB")
    assert out.shape == merged.shape and np.isfinite(out).all() and refiner.last_note is None
    # the same computation in torch
    vae = RawVAE()
    load_weights(vae, load_checkpoint(trained / "vae.pt", "raw_vae_weights")["model"], trained / "vae.pt")
    padded, _ = pad_to_latent(merged)
    cond = torch.from_numpy(condition_maps(padded, np.ones((3, 4), np.float32), noise, 8, LensModel(), "RGGB"))[None]
    x = torch.from_numpy(padded)[None]
    with torch.no_grad():
        if model == "regressor":
            state = load_checkpoint(trained / "regress.pt", "latent_regressor_weights")
            unet, decoder = LatentUNet(), RawVAE().decoder
            unet.load_state_dict(state["model"])
            decoder.load_state_dict(state["decoder"])
            want = RegressorGraph(vae, unet, decoder)(x, cond)
        else:
            state = load_checkpoint(trained / "diffusion.pt", "latent_teacher_weights")
            unet = LatentUNet()
            unet.load_state_dict(state["model"])
            zm = EncoderGraph(vae)(x)
            noise0 = torch.from_numpy(np.random.default_rng(0).standard_normal(zm.shape, dtype=np.float32))
            z = sample(unet, zm, cond, globals_from(cond), 3, noise0, state["kappa"])
            want = DecoderGraph(vae.decoder, float(vae.scale))(z, x)
    assert np.allclose(out, want[0, :, :60, :90].numpy(), atol=1e-4)


def test_a_model_that_gives_nan_falls_back_to_the_merge_and_says_so(trained, tmp_path):
    from trainers import export_refine

    state = load_checkpoint(trained / "regress.pt", "latent_regressor_weights")
    state["model"]["out.2.bias"] = torch.full_like(state["model"]["out.2.bias"], float("nan"))
    save_checkpoint(tmp_path / "nan.pt", state)
    weights = tmp_path / "weights"
    shutil.copytree(trained / "weights", weights)
    export_refine.export_all(trained / "vae.pt", None, tmp_path / "nan.pt", weights)
    refiner = BurstRefiner(RefineConfig("regressor"), weights)
    merged = np.full((4, 32, 32), 0.2, np.float32)
    out = refiner.refine_planes(merged, np.ones((2, 2), np.float32), NoiseModel((1e-3,) * 4, (1e-4,) * 4), 8,
                                LensModel(), "RGGB")
    assert np.array_equal(out, merged) and "NaN" in refiner.last_note


def test_missing_refinement_weights_are_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": 1, "models": {}}))
    with pytest.raises(WeightsError, match="burst_regressor.*train_burst_refine"):
        BurstRefiner(RefineConfig("regressor"), tmp_path)
    with pytest.raises(ValueError, match="refine model"):
        RefineConfig("nosuch")


def test_checkpoints_of_another_kind_or_corrupt_are_refused_naming_the_file(trained, tmp_path, capsys):
    from trainers import train_diffusion

    with pytest.raises(CheckpointError, match="raw_vae.*not a 'latent_teacher'"):
        load_checkpoint(trained / "vae.ckpt", "latent_teacher")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.ckpt is not a readable checkpoint"):
        load_checkpoint(bad, "raw_vae")
    code = train_diffusion.main(["--data", str(trained / "data"), "--vae", str(bad), "--steps", "1"])
    assert code == 2 and "bad.ckpt is not a readable checkpoint" in capsys.readouterr().err


def test_the_data_resumes_at_the_first_missing_shard(tmp_path):
    images = [("astronaut", photo())]
    write_split(tmp_path, "train", images, 3, SPEC, first_index=0)
    first = load_split(tmp_path, "train")
    (tmp_path / "train_00000.npz").unlink()
    write_split(tmp_path, "train", images, 3, SPEC, first_index=0)
    again = load_split(tmp_path, "train")
    assert all(np.array_equal(first[k], again[k]) for k in first)


def _bayer_frames(n: int = 8):
    from capture.simulated import SimulatedCamera, SimulatedConfig
    from capture.frame import PixelFormat

    cam = SimulatedCamera(SimulatedConfig(width=160, height=96, pixel_format=PixelFormat.BAYER16, realtime=False))
    cam.open()
    try:
        return [cam.read() for _ in range(n)]
    finally:
        cam.close()


@pytest.mark.parametrize("k", [1, 2, 4])
def test_each_consistency_step_count_is_one_graph_that_equals_torch(trained, k):
    from trainers.export_refine import ConsistencyGraph
    from trainers.refine_training import load_weights

    refiner = BurstRefiner(RefineConfig("consistency", k, guard=False), trained / "weights")
    merged = np.random.default_rng(k).random((4, 40, 56), dtype=np.float32) * 0.4
    noise = NoiseModel((1e-3,) * 4, (1e-4,) * 4)
    out = refiner.refine_planes(merged, np.ones((2, 2), np.float32), noise, 8, LensModel(), "RGGB")
    vae, student = RawVAE(), LatentUNet()
    load_weights(vae, load_checkpoint(trained / "vae.pt", "raw_vae_weights")["model"], trained / "vae.pt")
    load_weights(student, load_checkpoint(trained / "consistency.pt", "latent_consistency_weights")["model"], "c")
    cond = condition_maps(merged, np.ones((2, 2), np.float32), noise, 8, LensModel(), "RGGB")
    with torch.no_grad():
        want = ConsistencyGraph(vae, student, k)(torch.from_numpy(merged)[None], torch.from_numpy(cond)[None])
    assert np.allclose(out, want[0].numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="runs \\(1, 2, 4\\) steps"):
        RefineConfig("consistency", 3)


def test_burst_fusion_switches_steps_between_bursts_and_reports_them(trained):
    from engine.burst.fusion import BurstFusion

    frames = _bayer_frames()
    proc = BurstFusion(8, steps=2, weights_dir=str(trained / "weights"))
    r = proc.process(frames)
    assert r.steps == 2 and "refine (2 steps, guard)" in r.stages and r.notice is None
    assert r.psnr_vs_truth is not None and r.psnr_vs_truth > 20  # the simulated camera knows the truth
    proc.steps = 0
    r0 = proc.process(frames)
    assert r0.steps == 0 and not any(k.startswith("refine") for k in r0.stages)
    proc.steps = 4
    assert proc.process(frames).steps == 4
    with pytest.raises(ValueError, match="steps must be one of"):
        proc.steps = 3


def test_burst_fusion_without_refinement_weights_runs_the_merge_and_says_why(tmp_path):
    from engine.burst.fusion import BurstFusion
    from engine.processor import StepsNotSupported

    (tmp_path / "manifest.json").write_text(json.dumps({"schema": 1, "models": {}}))
    proc = BurstFusion(8, weights_dir=str(tmp_path))
    r = proc.process(_bayer_frames())
    assert r.ok and r.steps == 0 and "learned refinement is off" in r.notice and "burst_consistency_1" in r.notice
    with pytest.raises(StepsNotSupported, match="only steps 0"):
        proc.steps = 1


def test_the_guard_covers_the_edges_of_planes_of_any_size(trained):
    # 6x6 planes (smaller than a guard patch) and 20x28 (a strip beyond the whole patches)
    refiner = BurstRefiner(RefineConfig("regressor"), trained / "weights")
    noise = NoiseModel((1e-3,) * 4, (1e-4,) * 4)
    for h, w in ((6, 6), (20, 28)):
        merged = np.full((4, h, w), 0.2, np.float32)
        out = refiner.refine_planes(merged, np.ones((1, 1), np.float32), noise, 8, LensModel(), "RGGB")
        assert out.shape == (4, h, w) and np.isfinite(out).all()
