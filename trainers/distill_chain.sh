#!/usr/bin/env bash
# Issue 4's chain at full size on the real webcam clip: capture every frame -> teacher (with the
# temporal stage: 2 neighbours on each side) -> prepare (90/10 split) -> distil StudentSR on the
# teacher's images -> plots -> the app enhances the held-out frames with the new weights.
# The teacher's stages: TEACHER_STAGES (default "--no-sr --no-deblur": bicubic 2x -> denoise ->
# unsharp, the configuration `eyefuse bench teacher` measures best on webcam frames; "" runs the
# seed's whole SR -> deblur -> denoise -> sharpen chain, about 25 s a frame).
# About 10 min for the teacher and 5 min for the student on 2 idle cores; run it with
#   nohup trainers/distill_chain.sh > runs/distill_chain.log 2>&1 &
# Every step resumes: re-run the script after an interruption. Work files go to runs/distill/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
EF=${EYEFUSE:-.venv/bin/eyefuse}
CLIP=${CLIP:-../shared/data/videos_real/test.webm}
D=${DISTILL_DIR:-runs/distill}
TEACHER_STAGES=${TEACHER_STAGES---no-sr --no-deblur}
mkdir -p "$D" training_logs/student_sr_distilled
stamp() { echo "=== $1 $(date -u +%T)"; }
stamp capture
[ -f "$D/raw/frames.json" ] || [ -f "$D/raw_VALIDATION/frames.json" ] || \
    $EF capture --source "$CLIP" --frames 94 --out "$D/raw" --fast
stamp teacher
# shellcheck disable=SC2086
$PY -m trainers.teacher "$D/raw" "$D/teacher" $TEACHER_STAGES --workers 2 --temporal 2 --no-progress
stamp prepare
$PY -m trainers.prepare_dataset "$D/raw" "$D/teacher"
stamp distil
$PY -m trainers.train_student --targets teacher --data "$D/raw" --teacher-dir "$D/teacher" \
    --name student_sr_distilled --epochs 12 --steps-per-epoch 250 --batch 16 --patch 48 --threads 2 \
    --log-path training_logs/student_sr_distilled/log.csv --checkpoint runs/student_sr_distilled.ckpt --resume
$PY -m trainers.plot_metrics --log-path training_logs/student_sr_distilled/log.csv
stamp app
$EF enhance "$D/raw_VALIDATION" -o "$D/enhanced" --model student_sr_distilled --no-progress
stamp done
