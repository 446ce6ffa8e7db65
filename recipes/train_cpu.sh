#!/usr/bin/env bash
# Train RecThinker on the CPU: teacher rollouts -> filter -> LoRA SFT -> GRPO -> evaluation, on ML-1M with
# the bundled SmolLM2-135M-Instruct (converted once to a transformers folder, ~100 s).
#
#   bash recipes/train_cpu.sh            # smoke (< 15 min on 2 idle cores), then the < 1 hour cpu preset
#   STAGES=smoke bash recipes/train_cpu.sh
#
# Each run folder is resumable: rerun the same command after an interruption and finished stages are skipped
# (delete outputs/<run>/stages/<stage>.json to redo one stage and, by hand, the stages after it).
# The same pipeline, verb by verb (what `train` does inside), is at the bottom of this file.
set -euo pipefail

STAGES="${STAGES:-smoke cpu}"
export TQDM_DISABLE="${TQDM_DISABLE:-1}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"  # two cores; with a busy neighbour one thread is faster

for preset in $STAGES; do
  recthinker -v train --preset "$preset" --dataset ml-1m --out "outputs/train-$preset"
  cat "outputs/train-$preset/summary.md"
done

# Verb by verb (the cpu preset's values):
#   recthinker rollout --policy teacher --episodes 200 --out outputs/manual/rollout.jsonl
#   recthinker filter  --in outputs/manual/rollout.jsonl --out outputs/manual/sft.jsonl --ndcg-threshold 0.6
#   recthinker sft     --data outputs/manual/sft.jsonl --out outputs/manual/sft --max-steps 40 --grad-accum 4 \
#                      --max-length 4096
#   recthinker grpo    --model outputs/manual/sft/adapter --episodes 8 --out outputs/manual/grpo \
#                      --grpo-steps 4 --num-generations 2 --max-completion-length 768
#   recthinker evaluate --dataset ml-1m --set dense/test --limit 10 --ranker agent \
#                      --model outputs/manual/grpo/adapter --out outputs/manual/eval-dense
