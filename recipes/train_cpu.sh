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
  if [ "$preset" = cpu ]; then
    # the cpu preset's final adapter is the committed default model: publish it there (a git diff shows what moved)
    recthinker -v train --preset cpu --dataset ml-1m --out outputs/train-cpu --publish src/recthinker/llm/default_model
  else
    recthinker -v train --preset "$preset" --dataset ml-1m --out "outputs/train-$preset"
  fi
  cat "outputs/train-$preset/summary.md"
done

# The stages are also verbs (`recthinker rollout | filter | sft | grpo | evaluate --help`); the settings the
# presets use, and why, are in src/recthinker/train/presets.py. `train` is the tested way to chain them.
