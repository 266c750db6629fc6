#!/usr/bin/env bash
# The GPU checks of issues 13 and 15, as one script for a short GPU lease (under 10 minutes of wall time):
#
#   1. `benchmarks/contraction_cost.py --full --official-dims 32`: LeRobot's default UNet (512/1024/2048) at
#      D = 32 / 112 / 224, the penalty's step time and memory against DP, alone on the card (ratios are only fair
#      without neighbours); the official full-Jacobian construction only at D = 32 (at 112 it alone would take
#      a minute of the lease, and at 224 it does not fit 80 GB: ../shared/research/gpu-cost.md);
#   2. one `standard` cdp-bench cell per policy on Push-T keypoints (DP, DP-x0, CDP; 100 % of the episodes,
#      seed 0), the three side by side, their evaluations `--eval-jobs` at a time;
#   3. LeRobot's default image network (ResNet-18 + UNet 512/1024/2048, batch 64) on Push-T images, `diffusion`
#      and `cdp` side by side for as many steps as fit before the deadline, then `lerobot-eval` of each last
#      checkpoint with its own default sampler (DDPM-100 for diffusion, DPM-Solver++-10 for cdp), 50 episodes.
#
#   benchmarks/gpu_session.sh RESULTS_DIR [BUDGET_S] [WORK_DIR]
#
# Inputs (converted beforehand, so the machine needs no zarr): $KP_DATA, the keypoints dataset cdp-bench makes
# (`python -m cdp_plugin.data.generate pusht --episodes 206 --out DIR --seed 0`), and $IMG_DATA, the image
# flavour (`python -m cdp_plugin.data.convert pusht ZARR --out DIR --obs image`). Everything lands in
# RESULTS_DIR/gpu_results.tgz (cells, eval_info.json, logs, the cost table), packed before BUDGET_S runs out.
# A dry run on a CPU: DEVICE=cpu COST_FLAGS="--dims 2 --steps 1 --skip-official --no-write" \
#   STD_FLAGS="--steps 4 --eval-episodes 1" IMG_FLAGS_EXTRA="--policy.down_dims=[16,32] --save_freq=2" \
#   IMG_EVAL_EPISODES=1 benchmarks/gpu_session.sh /tmp/out 400
set -u
OUT=${1:?usage: gpu_session.sh RESULTS_DIR [BUDGET_S] [WORK_DIR]}
BUDGET=${2:-575}
W=${3:-/tmp/cdp_gpu}
: "${KP_DATA:?set KP_DATA}" "${IMG_DATA:?set IMG_DATA}"
DEV=${DEVICE:-cuda}
COST_FLAGS=${COST_FLAGS:---full --official-dims 32}
PY=${PYTHON:-python3}
REPO=$(cd "$(dirname "$0")/.." && pwd)
T0=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - T0))); }
say() { echo "[$(($(date +%s) - T0)) s] $*"; }
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$W/logs"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$W/logs/card.txt" 2>&1

pack() {
  say "packing"
  cp "$REPO/benchmarks/RESULTS.md" "$W/RESULTS.gpu.md" 2>/dev/null
  (cd "$W" && find . \( -name '*.json' -o -name '*.log' -o -name '*.txt' -o -name '*.md' -o -name '*.jsonl' \) \
      -not -path '*/checkpoints/*' -not -path '*/data/*' -size -4M -print0 |
    tar --null -czf "$OUT/gpu_results.tgz" -T -)
  ls -la "$OUT"
}

# 1. cost, alone on the card
say "contraction_cost --full"
timeout $(($(left) - 380)) "$PY" "$REPO/benchmarks/contraction_cost.py" $COST_FLAGS --device "$DEV" > "$W/logs/cost.log" 2>&1
say "cost rc=$?"; tail -n 25 "$W/logs/cost.log"

# 2. standard Push-T keypoint cells, one process per policy
mkdir -p "$W/bench_std/data"
ln -sfn "$KP_DATA" "$W/bench_std/data/pusht_206ep"
for pol in dp dp_x0 cdp_frobenius; do
  OMP_NUM_THREADS=1 timeout $(($(left) - 15)) cdp-bench --profile standard --tasks pusht --fractions 1.0 \
    --seeds 0 --policies "$pol" --device "$DEV" --num-workers 3 --eval-jobs 5 --out "$W/bench_std" \
    --no-report --no-progress ${STD_FLAGS:-} > "$W/logs/std_$pol.log" 2>&1 &
done

# 3. default image network, diffusion vs cdp, until the deadline leaves room for their evaluation
IMG_FLAGS=(--policy.device="$DEV" --policy.push_to_hub=false --policy.pretrained_backbone_weights=null
  --dataset.repo_id=local/pusht_image "--dataset.root=$IMG_DATA" --batch_size=64 --num_workers=3
  --steps=20000 --save_freq=500 --log_freq=100 --wandb.enable=false --seed=1000 ${IMG_FLAGS_EXTRA:-})
declare -A TRAIN_PID
for pol in diffusion cdp; do
  rm -rf "$W/img_$pol"
  OMP_NUM_THREADS=2 setsid lerobot-train --policy.type=$pol "${IMG_FLAGS[@]}" --output_dir="$W/img_$pol" \
    > "$W/logs/img_train_$pol.log" 2>&1 &
  TRAIN_PID[$pol]=$!
done
while [ "$(left)" -gt 130 ]; do sleep 5; done
for pol in diffusion cdp; do kill -INT -- -"${TRAIN_PID[$pol]}" 2>/dev/null; done
sleep 8
for pol in diffusion cdp; do kill -KILL -- -"${TRAIN_PID[$pol]}" 2>/dev/null; done
for pol in diffusion cdp; do
  ck=""  # the newest complete checkpoint (one being written when training was stopped is skipped)
  for c in $(ls -d "$W/img_$pol"/checkpoints/[0-9]* 2>/dev/null | sort -r); do
    [ -f "$c/pretrained_model/model.safetensors" ] && [ -d "$c/training_state" ] && { ck=$c; break; }
  done
  say "image $pol: last checkpoint ${ck:-none}"
  grep -o "step:[0-9.K]* .*updt_s:[0-9.]* data_s:[0-9.]*" "$W/logs/img_train_$pol.log" | tail -n 2
  [ -n "$ck" ] || continue
  OMP_NUM_THREADS=2 timeout $(($(left) - 12)) lerobot-eval --policy.path="$ck/pretrained_model" \
    --policy.device="$DEV" --env.type=pusht --env.obs_type=pixels_agent_pos --env.episode_length=300 \
    --eval.n_episodes=${IMG_EVAL_EPISODES:-50} --eval.batch_size=${IMG_EVAL_EPISODES:-50} --eval.use_async_envs=false --seed=100000 \
    --output_dir="$W/img_eval_$pol" > "$W/logs/img_eval_$pol.log" 2>&1 &
done
while [ "$(left)" -gt 12 ] && jobs -r | grep -q .; do sleep 3; done
say "standard cells: $(ls "$W/bench_std/cells" 2>/dev/null | tr '\n' ' ')"
for f in "$W"/img_eval_*/eval_info.json; do
  [ -f "$f" ] && "$PY" -c "import json,sys; o=json.load(open(sys.argv[1]))['overall']; print(sys.argv[1], \
    {k: o[k] for k in ('pc_success', 'avg_max_reward', 'n_episodes', 'eval_s')})" "$f"
done
pack
