#!/usr/bin/env bash
# Round 29's development grid (preregistration.txt): each candidate once on the development specimens.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=experiments/low_data/round29/dev
COMMON=(--datasets i3a --dev --k 10 50 --repeats 3 --steps 30 --epochs 20 --image-size 48 --n-test-cells 60 --threads 2)
for loss in bce contrastive; do
  for scoring in mean prototype; do
    for lr in 1e-3 3e-3; do
      python experiments/low_data/run.py "${COMMON[@]}" --methods siamese_ensemble \
        --siamese-loss $loss --siamese-scoring $scoring --siamese-lr $lr --out $OUT/siamese_${loss}_${scoring}_lr$lr
    done
  done
done
for lr in 1e-3 3e-3; do
  python experiments/low_data/run.py "${COMMON[@]}" --methods softmax_cnn --lr $lr --out $OUT/softmax_lr$lr
done
