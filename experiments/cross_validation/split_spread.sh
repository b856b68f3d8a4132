#!/usr/bin/env bash
# Why cross-validation: the texture SVM on the 155 real ICAP reference fields, ten single 70/15/15
# splits (data.seed=0..9; each test split ~23 images for 32 classes). Prints each split's test/mca
# with its bootstrap 95% interval, then the spread over the ten splits.
#   bash experiments/cross_validation/split_spread.sh      # writes outputs/cv_real/svm_seeds
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED="${ANA_SHARED:-$(pwd)/../shared}"
DATA="$SHARED/data/ana-pattern-quest/patterns"
[ -d "$DATA" ] || { echo "no real images at $DATA (set ANA_SHARED)"; exit 1; }
BIN="${BIN:-.venv/bin}"
OUT="${OUT:-outputs/cv_real}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=offline WANDB_SILENT=true
"$BIN/ana-train" -m experiment=svm_baseline data=single_label "data.root=$DATA" 'data.seed=range(10)' "hydra.sweep.dir=$OUT/svm_seeds"
"$BIN/python" - "$OUT/svm_seeds" <<'PY'
import json, sys
from pathlib import Path
import numpy as np
rows = []
for job in sorted(Path(sys.argv[1]).glob("[0-9]*"), key=lambda p: int(p.name)):
    m = json.loads((job / "metrics.json").read_text())
    n = sum(1 for line in open(job / "split_manifest.csv") if line.rstrip().split(",")[2:3] == ["test"])
    rows.append((job.name, n, m["test/mca"], m["test/mca_ci95_low"], m["test/mca_ci95_high"]))
print("| data.seed | test images | test/mca [95% bootstrap CI] |\n|---|---|---|")
for seed, n, v, lo, hi in rows:
    print(f"| {seed} | {n} | {v:.2f} [{lo:.2f}, {hi:.2f}] |")
v = np.array([r[2] for r in rows])
print(f"\nover {len(v)} splits: mean {v.mean():.3f}, SD {v.std(ddof=1):.3f}, min {v.min():.3f}, max {v.max():.3f}")
PY
