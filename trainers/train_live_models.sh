#!/usr/bin/env bash
# StudentSR and the ESPCN/FSRCNN baselines, at the papers' widths and shrunk toward StudentSR's
# budget (_tiny): same data, same steps, same batch (the engine benchmark compares them). About 4 min for StudentSR and 10-15 min for each baseline on 2 idle cores; run it with
#   nohup trainers/train_live_models.sh > runs/train_live_models.log 2>&1 &
# Checkpoints go to runs/ (resumable: re-run the script after an interruption).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
mkdir -p runs training_logs
COMMON="--epochs 12 --steps-per-epoch 250 --batch 16 --patch 48 --threads 2"
# Reference StudentSRs, no live models: they show what capacity buys on this protocol. Medium, 7x
# larger (2x unshuffle, 24 channels x 2 blocks; about 3 min), is the 1.6 GMAC per frame we first
# budgeted with; large, 180x (64 channels x 8 blocks; about 35 min).
$PY -m trainers.train_student --name student_sr_medium --unshuffle 2 --channels 24 --blocks 2 --base-blur 0.8 $COMMON --log-path training_logs/student_sr_medium/log.csv --checkpoint runs/student_sr_medium.ckpt --resume
$PY -m trainers.train_student --name student_sr_large --unshuffle 2 --channels 64 --blocks 8 --base-blur 0.8 --lr 5e-4 $COMMON --log-path training_logs/student_sr_large/log.csv --checkpoint runs/student_sr_large.ckpt --resume
# (student last: its run overwrites the weights the app uses)
$PY -m trainers.train_student --arch espcn --lr 1e-3 $COMMON --log-path training_logs/espcn/log.csv --checkpoint runs/espcn.ckpt --resume
$PY -m trainers.train_student --arch fsrcnn --lr 1e-3 $COMMON --log-path training_logs/fsrcnn/log.csv --checkpoint runs/fsrcnn.ckpt --resume
$PY -m trainers.train_student --arch espcn --widths 8,8 --name espcn_tiny --lr 1e-3 $COMMON --log-path training_logs/espcn_tiny/log.csv --checkpoint runs/espcn_tiny.ckpt --resume
$PY -m trainers.train_student --arch fsrcnn --widths 8,4,2 --name fsrcnn_tiny --lr 1e-3 $COMMON --log-path training_logs/fsrcnn_tiny/log.csv --checkpoint runs/fsrcnn_tiny.ckpt --resume
$PY -m trainers.train_student --arch student_sr --base-blur 0.8 $COMMON --log-path training_logs/student_sr/log.csv --checkpoint runs/student_sr.ckpt --resume
for run in espcn fsrcnn espcn_tiny fsrcnn_tiny student_sr_medium student_sr_large student_sr; do
    $PY -m trainers.plot_metrics --log-path training_logs/$run/log.csv
done
