#!/bin/bash
# The GPU checks of issue 12 in one script, for a machine with one CUDA GPU (run on a lent H200 in round 26):
#   1. experiments/benchmarks/time_to_accuracy.py --device cuda (the whole set on the GPU), alone on the machine;
#   2. `ana-train experiment=i3a_cells trainer=gpu` over the grouped 5-fold CV, the five folds at once on the one GPU
#      (each job is small), on the folds of a CPU sweep when FOLDS=<sweep>/folds_manifest.csv is given, so that
#      experiments/i3a_cells/val_compare.py can pair them with it; beside them the default run at full size (its own
#      split, `data.seed=0`: the 6 specimen groups the CPU default is tested on), unless DEFAULT_RUN=0;
#   3. the config matrix's trainer/debug options build their Trainer (skipped where the machine has too few GPUs);
#   4. experiments/benchmarks/decode_threads.py: a cold data setup decoding in 1 thread, 4 and the default number of
#      worker processes (round 27; one per CPU up to 8), so the machine's cores are measured against round 26's 80 s.
#
#   bash experiments/benchmarks/gpu_check.sh <I3A training folder> [out folder]
#   FOLDS=outputs/cv_base/folds_manifest.csv bash experiments/benchmarks/gpu_check.sh ../shared/data/i3a2014-task1/training
#
# Time limits (seconds, env): T_TTA (170), T_CV (300, per fold job), T_PYTEST (45), T_DECODE (150); 0 skips a step.
# The six jobs of step 2 share the machine: each decodes in P_CV (3) worker processes. DEV/TR switch the
# device and trainer (cpu/cpu runs the same steps as a smoke test). Where the project is not installed, its package
# and conf/ are copied to /tmp/pkg; wheels in .whl/ (an offline machine) are installed to /tmp/site first.
#
# An offline GPU machine that has torch, lightning, timm, torchmetrics, scikit-image and opencv but not the rest
# (round 26's H200, Python 3.12) needed these 14 wheels in .whl/. Fetch them where pip works:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     hydra-core==1.3.8 omegaconf==2.3.1 albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5 \
#     annotated-types==0.8.0 typing-inspection==0.4.5 simsimd==6.5.16 stringzilla==5.3.2 \
#     pytorch-metric-learning==2.9.0 ImageHash==4.3.2 PyWavelets==1.9.0
#   pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3      # published as a source archive only
# and the I3A folder as one tarball (21,618 small files; 24 MB): tar czf i3a.tar.gz -C <parent of training> training
# Rehearse first on a CPU with those packages off the path (DEV=cpu TR=cpu, EXTRA_CV='trainer.max_epochs=1 …').
set -u
ROOT=$(realpath "${1:?usage: gpu_check.sh <I3A training folder> [out folder]}")
OUT=$(realpath -m "${2:-${OUT:-outputs/gpu_check}}"); mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline NO_ALBUMENTATIONS_UPDATE=1 WANDB_SILENT=true
T0=$(date +%s); log(){ echo "[$(( $(date +%s)-T0 ))s] $*"; }
PY=${PY:-python3}; DEV=${DEV:-cuda}; TR=${TR:-gpu}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! $PY -c "import ana_lightning.conf" 2>/dev/null; then
  rm -rf /tmp/pkg && mkdir -p /tmp/pkg && cp -r ana_lightning hydra_plugins /tmp/pkg/ && cp -r conf /tmp/pkg/ana_lightning/conf
  # PYTHONSAFEPATH: `python -m` and pytest would otherwise find the checkout's ana_lightning/ (no conf inside) first
  export PYTHONPATH=/tmp/pkg${PYTHONPATH:+:$PYTHONPATH} PYTHONSAFEPATH=1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
$PY -c "import torch, lightning, timm, ana_lightning.jobs.train as t; print('torch', torch.__version__, 'lightning', lightning.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())" || exit 5

if [ "${T_TTA:-170}" != 0 ]; then
  log "1. time to accuracy, --device $DEV (nothing else running)"
  timeout "${T_TTA:-170}" $PY experiments/benchmarks/time_to_accuracy.py --root "$ROOT" --device "$DEV" \
    --out "$OUT/time_to_accuracy_$DEV.json" ${EXTRA_TTA:-} > "$OUT/time_to_accuracy_$DEV.log" 2>&1
  log "   exit $?"; tail -n 22 "$OUT/time_to_accuracy_$DEV.log"
fi

log "2. ana-train experiment=i3a_cells trainer=$TR, grouped 5-fold CV, the folds at once"
CV="$OUT/cv_$TR"; rm -rf "$CV"; mkdir -p "$CV"
FOLDS_ARG=(); [ -n "${FOLDS:-}" ] && FOLDS_ARG=("data.folds_manifest=$(realpath "$FOLDS")")
for k in 0 1 2 3 4; do
  OMP_NUM_THREADS=3 ANA_IO_PROCESSES=${P_CV:-3} timeout "${T_CV:-300}" $PY -m ana_lightning.cli.train experiment=i3a_cells trainer="$TR" \
    'data.split_fractions=[0.6,0.2,0.2]' data.root="$ROOT" data.folds=5 data.fold=$k "${FOLDS_ARG[@]}" hydra.run.dir="$CV/$k" ${EXTRA_CV:-} \
    > "$CV/fold$k.log" 2>&1 &
done
if [ "${DEFAULT_RUN:-1}" != 0 ]; then
  OMP_NUM_THREADS=3 ANA_IO_PROCESSES=${P_CV:-3} timeout "${T_CV:-300}" $PY -m ana_lightning.cli.train experiment=i3a_cells trainer="$TR" \
    data.root="$ROOT" hydra.run.dir="$CV/default" ${EXTRA_CV:-} > "$CV/default.log" 2>&1 &
fi
wait
log "   done"
for k in 0 1 2 3 4 default; do
  [ -f "$CV/fold$k.log" ] || [ -f "$CV/$k.log" ] || continue
  if [ "$k" = default ]; then echo "--- default run"; tail -n 3 "$CV/default.log"; else echo "--- fold $k"; tail -n 3 "$CV/fold$k.log"; fi
  $PY -c "import json; m=json.load(open('$CV/$k/metrics.json')); print({x: round(m[x], 4) for x in ('val/mca_best', 'test/mca', 'test/acc') if x in m})" 2>/dev/null
done
tar czf "$OUT/cv_$TR.tar.gz" --exclude='*.ckpt' -C "$OUT" "cv_$TR"

if [ "${T_PYTEST:-45}" != 0 ]; then
  log "3. config matrix: the trainer/debug options build their Trainer here"
  timeout "${T_PYTEST:-45}" $PY -m pytest -q -p no:cacheprovider tests/config/test_config_matrix.py -k "trainer or debug" \
    > "$OUT/pytest_trainer.log" 2>&1
  log "   exit $?"; tail -n 6 "$OUT/pytest_trainer.log"
fi
if [ "${T_DECODE:-150}" != 0 ]; then
  log "4. a cold data setup: 1 thread against worker processes (nothing else running)"
  timeout "${T_DECODE:-150}" $PY experiments/benchmarks/decode_threads.py --root "$ROOT" --rows "${DECODE_ROWS:-t1,p4,default}" \
    > "$OUT/decode_processes.md" 2> "$OUT/decode_processes.log"
  log "   exit $?"; tail -n 6 "$OUT/decode_processes.md"
fi
log "end"
