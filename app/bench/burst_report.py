"""The burst benchmark's report: the markdown sections `eyefuse bench burst` writes from its
measurements (app/bench/burst.py measures)."""
from __future__ import annotations

from app.bench.burst import BASELINES, MERGE_PARTS, NOISE_LEVELS, NOISE_ROWS, OURS, REFINE_ROWS
from app.bench.report import markdown_table


def refine_section(refine: dict, gains) -> str:
    rows = []
    for r in REFINE_ROWS:
        cells = []
        for g in gains:
            lin, gam, ssim_, rate, smooth = refine["scores"][g][r]
            spread = refine.get("rate_spread", {}).get(g, {}).get(r)
            cells.append(f"{lin:.2f} / {gam:.2f} / {ssim_:.3f} / {100 * rate:.1f}%"
                         + (f" (±{100 * spread:.1f})" if spread else "") + f" / {100 * smooth:.0f}%")
        whole = refine["whole_path_ms"].get(r)
        rows.append([r] + cells + [f"{refine['ms'][r]:.0f}" + (f" ({whole:.0f})" if whole else "")])
    merge = {g: refine["scores"][g][REFINE_ROWS[0]][1] for g in gains}
    gaps = "; ".join(f"gain {g}: regressor {refine['scores'][g][REFINE_ROWS[1]][1] - merge[g]:+.2f}, teacher "
                     f"{refine['scores'][g][REFINE_ROWS[2]][1] - merge[g]:+.2f}, consistency 1 step "
                     f"{refine['scores'][g][REFINE_ROWS[3]][1] - merge[g]:+.2f}, ceiling "
                     f"{refine['scores'][g][REFINE_ROWS[9]][1] - merge[g]:+.2f} dB" for g in gains)
    sizes = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sorted(refine["sizes_bytes"].items()))
    total = sum(refine["sizes_bytes"].values()) / 1e6
    return (markdown_table(["8 x 640x480 Kodak24 bursts"]
                           + [f"gain {g}: PSNR lin / gamma / SSIM gamma / hallucinated / over-smoothed" for g in gains]
                           + ["ms per burst, median (whole path)"], rows)
            + f"\n\nOver the merge (gamma PSNR): {gaps}. {refine['images']} images x {refine['seeds']} noise draws "
            f"per gain; the hallucination rate's spread (±) is the standard deviation of its mean over the draws. "
            f"Hallucinated: 8x8 patches of the linear planes (each high-passed on its own, u - Gaussian(u, 1)) "
            f"whose high-pass error to the truth exceeds the merge's by 1.25x (plus a floor of 1e-6) while their "
            f"high-pass energy exceeds the truth's; over-smoothed: the error is up and the energy down "
            f"(engine/burst/guard.py). The merge row's time is the whole fuse_burst (raw, align, noise check, "
            f"merge); the others' the refinement alone (in brackets: with the fuse, the whole path); the teacher "
            f"runs {refine['teacher_steps']} sampler steps offline; the consistency rows are one ONNX graph each "
            f"(encoder, k steps, decoder) plus the guard; the ceiling is the encoder on the clean planes and the "
            f"decoder over the merge, what a perfect latent would give. Models: {sizes} ({total:.2f} MB in all). "
            f"MFIR (a learned burst denoiser trained for it) reports 42.2 / 39.1 / 35.8 / 32.5 dB gamma on this "
            f"protocol.")


def noise_section(noise: dict, gains) -> str:
    """The noise rows: merged PSNR per way of getting the noise, images worse than the reference,
    and the measured noise over the true."""
    body = []
    for set_name, per_gain in noise.items():
        rows = []
        for r in NOISE_ROWS:
            cells = []
            for g in gains:
                x = per_gain[g]
                worse = x["worse_than_reference"].get(r)
                cells.append(f"{x['psnr'][r]:.2f}" + (f" ({worse} worse)" if worse else ""))
            rows.append([r] + cells)
        true_row, measured_row = NOISE_ROWS[1], NOISE_ROWS[4]
        gaps = ", ".join(f"gain {g} {per_gain[g]['psnr'][measured_row] - per_gain[g]['psnr'][true_row]:+.2f} dB"
                         for g in gains)
        n = per_gain[gains[0]]["images"]
        body.append(f"**{set_name}** ({n} images): mean linear PSNR (dB), and how many images the row merged to worse "
                    f"than their own reference frame.\n\n"
                    + markdown_table(["noise model"] + [f"gain {g}" for g in gains], rows)
                    + f"\n\nMeasured noise against the true noise: {gaps}.")
        rows = []
        for g in gains:
            x = per_gain[g]
            rows.append([f"gain {g}"] + [" / ".join(f"{v:.2f}" for v in x["ratio_mean"][k]) + " (worst "
                                         + " / ".join(f"{v:.2f}" for v in x["ratio_worst"][k]) + ")"
                                         for k in ("burst", "single frame")])
        body.append(markdown_table(["", "measured from the burst: variance / true at x = "
                                    + " / ".join(map(str, NOISE_LEVELS)), "single-frame estimate (before)"], rows))
    body.append("Bursts as above (8 frames, SyntheticBurst motion), written as 12-bit frames (black 256, white "
                "4095: noise below black is clipped, as a DNG holds it) with the true NoiseProfile, one 8x too high, "
                "or none. The texture set is the BSDS500 test photos with the highest mean squared gradient, at their "
                "own 480x320. The measured noise (engine/burst/noise.py) comes from phase-matched frame pairs; the "
                "single-frame estimate is the high-pass MAD of the reference frame alone, which the burst path used "
                "when a DNG had no NoiseProfile.")
    return "\n\n".join(body)


def raft_sentence(raft: dict | None) -> str:
    if raft is None:
        return "RAFT-small's CPU cost was not measured in this run."
    if "error" in raft:
        return f"RAFT-small's CPU cost was not measured: {raft['error']}."
    sizes = raft["sizes"]
    parts = ", ".join(f"{v['pair_s']:.2f} s per frame pair at {k} ({v['burst_s']:.1f} s per {raft['frames']}-frame burst)"
                      for k, v in sizes.items())
    return (f"RAFT is the learned reference. RAFT-small (our trainers/models/raft.py, {raft['params']:,} parameters "
            f"as published, {raft['updates']} updates, torch on {raft['threads']} threads; untrained weights, which "
            f"cost the same) measured {parts}, where our aligner does a whole burst in tens of milliseconds: too "
            f"slow for live use.")


def report_sections(quality, ghosts, speed_640, peak_640, big, live, gains, args, load_start, load_end, raft=None,
                    profile=None, noise=None, refine=None):
    n = args.images
    sections = []
    sections.append(("Conditions", (
        f"Kodak24 ({n} images) at 640x480, {args.frames}-frame bursts, SyntheticBurst motion (+-6 px and +-1 degree "
        f"per frame, frame 0 the reference), KPN gains {', '.join(map(str, gains))}; seed {args.seed}. "
        f"1-minute load average {load_start[0]:.1f} at the start and {load_end[0]:.1f} at the end (this benchmark "
        f"keeps up to both cores busy itself, so up to about 2 means nothing else ran)."
        + (" **Other jobs shared the machine**: wall times are what this run got; CPU times (all threads of the "
           "process) are closer to what a quiet machine would show." if max(load_start[0], load_end[0]) > 2.5 else ""))))
    # alignment
    rows = []
    for g in gains:
        e = quality["epe"][g]
        rows.append([f"gain {g}", f"{e['tiles']['mean']:.3f} (max {e['tiles']['max']:.3f})",
                     f"{e['dis']['mean']:.3f} (max {e['dis']['max']:.3f})"])
    target = quality["epe"][gains[0]]["tiles"]["mean"] if gains[0] == 1 else float("nan")
    sections.append(("Alignment error", markdown_table(
        ["noise", "tiles + global model (ours): mean EPE px", "OpenCV DIS (medium): mean EPE px"], rows) +
        f"\n\nEnd-point error in mosaic pixels of the dense flow against the true motion, averaged over the 7 "
        f"non-reference frames and the images (worst image in brackets), 8-pixel border ignored. The scenes are "
        f"static (camera motion only). Target: <= 0.1 px at gain 1; measured {target:.3f} px. " + raft_sentence(raft)))
    # quality
    methods_order = list(quality["scores"][gains[0]].keys())
    rows = []
    for m in methods_order:
        rows.append([m] + [f"{quality['scores'][g][m][0]:.2f} / {quality['scores'][g][m][2]:.2f} / "
                           f"{quality['scores'][g][m][3]:.3f}" for g in gains])
    margin = {g: quality["scores"][g][OURS][0] - max(quality["scores"][g][m][0] for m in BASELINES) for g in gains}
    sections.append(("Merge quality at 640x480", markdown_table(
        ["method"] + [f"gain {g}: PSNR lin / PSNR gamma / SSIM gamma" for g in gains], rows) +
        "\n\nPSNR in dB on the 4 packed planes in [0, 1] against the clean reference (linear: SyntheticBurst; after "
        "gamma 1/2.2: KPN), SSIM after gamma, 8-pixel border ignored. Baselines: " + ", ".join(BASELINES) +
        ". Ours over the best baseline (linear PSNR): " + ", ".join(f"gain {g} {margin[g]:+.2f} dB" for g in gains) +
        ". Ours uses the default MergeConfig (16x16 tiles, stride 8, Wiener strength 8, spatial 3, bicubic sampling)."))
    if noise:
        sections.append(("The noise the merge uses", noise_section(noise, gains)))
    if refine:
        sections.append(("Learned refinement after the merge", refine_section(refine, gains)))
    rows = [[m] + [f"{ghosts[g][m]:.4f}" for g in ghosts] for m in ghosts[next(iter(ghosts))]]
    sections.append(("Moving object (ghosting)", markdown_table(
        ["method"] + [f"RMSE on the object's path, gain {g}" for g in ghosts], rows) +
        "\n\nA 96-pixel square moving 16 px right and 8 px down per frame over 6 Kodak scenes with handheld shake. "
        "Along everything the object covered in any frame, the merged frame must be no worse than the reference "
        "frame (it falls back to it), where a blind average ghosts."))
    # speed
    rows = [[k, f"{v['wall_ms']:.0f}", f"{v['cpu_ms']:.0f}", v["runs"]] for k, v in speed_640.items()]
    align_ms, merge_ms = speed_640["align tiles"]["wall_ms"], speed_640["merge Wiener"]["wall_ms"]
    body = markdown_table(["stage (8 frames, 640x480)", "wall ms (median)", "CPU ms (median)", "runs"], rows)
    body += (f"\n\nTargets: align 8 frames <= 20 ms (measured {align_ms:.0f} ms wall, "
             f"{speed_640['align tiles']['cpu_ms']:.0f} ms CPU); align + merge <= 50 ms (measured "
             f"{align_ms + merge_ms:.0f} ms wall, {speed_640['align tiles']['cpu_ms'] + speed_640['merge Wiener']['cpu_ms']:.0f} ms CPU). "
             f"Peak resident memory of the benchmark process after the 640x480 runs: {peak_640:.0f} MiB.")
    if profile:
        rows = [[part, f"{ms:.1f}", f"{100 * ms / profile['merge_ms']:.0f}%"] for part, ms in profile["parts_ms"].items()]
        body += (f"\n\nWhere the merge's time goes, by cProfile in this run ({profile['merges']} merges of 8 x 640x480, "
                 f"{profile['merge_ms']:.0f} ms each under the profiler; own time of the functions doing each part):\n\n"
                 + markdown_table(["part of the Wiener merge", "ms per merge", "share"], rows))
    body += ("\n\nWith 16x16 tiles the merge is one numba kernel from the frames to the overlap-added "
             "result (engine/burst/merge_kernels.py: wiener_merge16). It takes two neighbouring tiles at a time, their "
             "four planes in the 8 lanes of generated straight-line FFT codelets (engine/burst/fft_codelets.py), "
             "which LLVM turns into 8-wide AVX butterflies: the reference's tiles once, then each frame's, sampled "
             "at each tile's flow (a translation: two 4-tap bicubic passes, as HDR+ takes each tile at its own "
             "offset); the Wiener gains, the spatial step and the inverse are 8 lanes wide too. It replaced OpenCV "
             "remaps of every frame by its per-pixel flow (16 ms of a 43 ms merge, with their maps) and a kernel "
             "whose lanes were one plane's reference and seven frames, where the gains' division stayed scalar: "
             "merge 41-45 -> 29-30 ms in alternating runs, the merged PSNR moved by 0.002 dB or less "
             "(24 Kodak bursts, gains 1-8). Before any fused kernel, scipy's FFTs and numba loops passed about "
             "160 MB of tile and spectrum arrays between them per burst, and memory is slow here (copying a 36 MB "
             "array took 8.7 ms): that merge took 76-80 ms on the bursts where the first fused kernel took 55-59 ms "
             "(measured while building it; the burst path's allocator setting, engine/allocator.py, had already "
             "taken it from 97-105 ms). ")
    if profile:
        floor = profile["parts_ms"][MERGE_PARTS[0][0]]
        body += f"The kernel alone takes {floor:.0f} ms above. "
    robust_ms = speed_640.get("merge robust", {}).get("wall_ms")
    if robust_ms is not None:
        body += (f"The robust average (no DFT, {robust_ms:.0f} ms) is "
                 + ("no faster: it is only a baseline." if robust_ms >= merge_ms else "the faster fallback, at the quality shown above."))
    sections.append(("Speed at 640x480", body))
    if big:
        rows = [[k, f"{v['wall_ms']:.0f}", f"{v['cpu_ms']:.0f}"] for k, v in big["stages"].items()]
        q = ", ".join(f"{m} {v[0]:.2f} / {v[1]:.2f} dB" for m, v in big["scores"].items())
        total = big["stages"]["align tiles"]["wall_ms"] + big["stages"]["merge Wiener"]["wall_ms"]
        sections.append(("12 MP (4032x3024)", markdown_table(["stage (8 frames, 12 MP)", "wall ms", "CPU ms"], rows) +
            f"\n\n{len(big['images'])} Kodak images ({', '.join(big['images'])}) magnified 5.9x, gain 4, timed after one "
            f"untimed burst (kernels loaded, the process's memory touched). Align + merge "
            f"{total / 1000:.2f} s wall (target <= 2 s). Peak resident memory while ours aligned and merged "
            f"{big.get('ours_peak_rss_mib', float('nan')):.0f} MiB (target < 1.5 GB; sampled every 5 ms, the burst "
            f"itself, 8 frames x 4 planes x 3 MP float32, is 390 MiB of it); of the whole process, baselines "
            f"included, {big['peak_rss_mib']:.0f} MiB. Quality (PSNR linear / gamma): {q}. "
            f"EPE tiles / DIS: " + ", ".join(f"{a:.3f} / {b:.3f}" for a, b in big["epe"]) +
            " px (magnified photos are smooth, so these are easy scenes)."))
    if live:
        st = live.get("engine_stage_median_ms", {})
        sections.append(("Live: BurstFusion on the simulated Bayer camera", markdown_table(
            ["results shown", "errors", "seconds", "display fps", "captured", "engine skipped", "latency ms median / p99",
             "peak RSS MiB"],
            [[live["frames_shown"], live["errors"], f"{live['seconds']:.0f}", f"{live['display_fps']:.1f}",
              live["captured"], live["engine_skipped"], f"{live['latency_ms_median']:.0f} / {live['latency_ms_p99']:.0f}",
              f"{live['peak_rss_mib']:.0f}"]]) +
            "\n\nStage medians (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in st.items()) +
            f". `eyefuse live --headless --source simulated:bayer --model burst_fusion` does the same; 640x480 at 30 fps, "
            f"8-frame bursts; the engine takes the newest burst each time and skips what it cannot keep up with. "
            f"Last error: {live['last_error']}."))
    return sections
