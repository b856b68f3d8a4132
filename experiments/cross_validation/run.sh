#!/usr/bin/env bash
# Cross-validation on the 155 real ICAP reference fields (32 classes, 3-5 images each):
# the texture SVM and a small CNN trained from scratch, each 3-fold x 2 repeats on the SAME folds
# (grouped: byte-identical files together; stratified), then a paired comparison.
#   bash experiments/cross_validation/run.sh            # writes outputs/cv_real/{svm,cnn,compare}
# Needs ../shared/data/ana-pattern-quest (or ANA_SHARED=<folder holding data/ana-pattern-quest>).
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED="${ANA_SHARED:-$(pwd)/../shared}"
DATA="$SHARED/data/ana-pattern-quest/patterns"
[ -d "$DATA" ] || { echo "no real images at $DATA (set ANA_SHARED)"; exit 1; }
BIN="${BIN:-.venv/bin}"
OUT="${OUT:-outputs/cv_real}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=offline WANDB_SILENT=true
FOLDS=(data=single_label "data.root=$DATA" data.folds=3 'data.fold=range(3)' data.repeats=2 'data.repeat=range(2)')
"$BIN/ana-train" -m experiment=svm_baseline "${FOLDS[@]}" "hydra.sweep.dir=$OUT/svm"
"$BIN/ana-train" -m "${FOLDS[@]}" data.image_size=96 data.batch_size=16 trainer.max_epochs="${EPOCHS:-15}" \
  callbacks.rich_progress_bar=null torch_threads=1 "hydra.sweep.dir=$OUT/cnn"
"$BIN/ana-compare" "a=$OUT/svm" "b=$OUT/cnn" "hydra.run.dir=$OUT/compare"
cat "$OUT/svm/cv_summary.md" "$OUT/cnn/cv_summary.md" "$OUT/compare/compare.md"
