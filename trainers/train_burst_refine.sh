#!/usr/bin/env bash
# The learned burst refinement's weights, from nothing, on this CPU (each stage resumable: run the
# same line again after an interruption and it goes on from its checkpoint in runs/).
#   1. data: 6144 BSDS500 bursts (+256 from BSDS500 val), about 5 min, 1.6 GB in ~/.cache/eyefuse
#   2. the RAW autoencoder, 5000 steps (about 10 min on an idle machine)
#   3. the diffusion teacher and 4. the regressor control: the same wall-time budget each
#   5. the consistency student, distilled from the teacher
#   6. ONNX graphs and manifest entries in weights/
# The committed weights: these commands, with the machine shared by tests and other work while they
# ran (each stage's log in training_logs/ has its steps and wall time).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BUDGET=${BUDGET:-12}   # minutes of training each for the teacher, the regressor and the student
$PY -m trainers.burst_refine_data --samples 6144 --val-samples 256
$PY -m trainers.train_raw_vae --steps 5000 --eval-every 500
$PY -m trainers.train_diffusion --objective diffusion --steps 12000 --budget "$BUDGET" --eval-every 1000
$PY -m trainers.train_diffusion --objective regress --steps 12000 --budget "$BUDGET" --eval-every 1000
$PY -m trainers.train_consistency --steps 6000 --budget "$BUDGET" --eval-every 1000
$PY -m trainers.export_refine
