"""`torchrun --nproc_per_node 2 -m trainers.train_student`: DistributedDataParallel over gloo on
this CPU, one epoch of two steps on a tiny fake BSDS500."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import torch  # the training extra: `make test` installs it, and a missing torch must fail, not skip

from tests.media import fake_bsds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_torchrun_two_processes_train_log_and_checkpoint(tmp_path):
    data = fake_bsds(tmp_path / "data")
    log, ckpt = tmp_path / "logs" / "ddp.csv", tmp_path / "ddp.ckpt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "trainers.train_student", "--data", str(data), "--epochs", "1", "--steps-per-epoch", "2",
           "--batch", "4", "--patch", "16", "--val-images", "2", "--channels", "8", "--blocks", "1",
           "--log-path", str(log), "--checkpoint", str(ckpt), "--no-export"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.count("epoch 1/1") == 1, "only rank 0 validates and logs"
    assert r.stderr.count("skipping unreadable training image") == 2, "each rank loads (and skips) the data"
    with open(log) as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["1"]
    assert all(np.isfinite(float(v)) for v in rows[0].values())
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and state["world_size"] == 2
    assert not any(k.startswith("module.") for k in state["model"]), "the unwrapped model is saved, not DDP's"
