#!/usr/bin/env bash
# Train RecThinker on GPUs from a local instruct model (no hub access is assumed: point MODEL at a folder).
# Written for, not run on, our CPU machines: treat the numbers as a starting point.
#
#   MODEL=/models/Qwen2.5-1.5B-Instruct bash recipes/train_gpu.sh one-gpu
#   MODEL=/models/Qwen2.5-7B-Instruct   bash recipes/train_gpu.sh multi-gpu
#
# one-gpu:   the whole pipeline in one process (`--preset gpu`: 2,000 teacher episodes, 2 SFT epochs, one
#            self-augmentation round, 200 GRPO steps with 8 generations, vLLM colocated for GRPO sampling,
#            evaluation of untrained/SFT/GRPO + teacher/zero-shot/fixed-workflow on dense/test + sparse/test).
# multi-gpu: the same stages verb by verb, so only the trainers run under `accelerate launch`; rollouts and
#            evaluation of the trained model go through a vLLM server that serves the LoRA adapter.
# Needs: pip install -e ".[train]" vllm (a vLLM release that matches the pinned torch/transformers) and,
# for ZeRO-3, deepspeed. The Qwen2.5 chat template of the model is the tool format the agent writes.
set -euo pipefail

MODE="${1:-one-gpu}"
MODEL="${MODEL:?set MODEL to a local model folder, e.g. /models/Qwen2.5-1.5B-Instruct}"
OUT="${OUT:-outputs/train-gpu-$(basename "$MODEL")}"
export TRL_EXPERIMENTAL_SILENCE=1 TQDM_DISABLE=1

if [[ "$MODE" == "one-gpu" ]]; then
  recthinker -v train --preset gpu --model "$MODEL" --dataset ml-1m --out "$OUT"
  cat "$OUT/summary.md"
  exit 0
fi

# ---- multi-gpu ---------------------------------------------------------------------------------------------
NGPU="${NGPU:-8}"
mkdir -p "$OUT"
# 1. bootstrap demonstrations (the scripted teacher: CPU work, no GPU needed) and the SFT dataset
recthinker rollout --policy teacher --episodes 2000 --out "$OUT/rollout.jsonl" --workers 8
recthinker filter --in "$OUT/rollout.jsonl" --out "$OUT/sft.jsonl" --ndcg-threshold 0.6
# 2. LoRA SFT across the GPUs (DDP; ZeRO-3 for 7B+: configs/accelerate/zero3.yaml)
accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes "$NGPU" \
  -m recthinker.cli sft --data "$OUT/sft.jsonl" --model "$MODEL" --out "$OUT/sft" \
  --epochs 2 --batch-size 4 --grad-accum 4 --learning-rate 1e-4 --max-length 4096 --gradient-checkpointing
# 3. GRPO from the SFT adapter: vLLM colocated on every training GPU (set in the pipeline's gpu preset; for
#    the verb, pass them through TRL's own launcher if you need server mode: `trl vllm-serve --model $MODEL`)
accelerate launch --config_file configs/accelerate/multi_gpu.yaml --num_processes "$NGPU" \
  -m recthinker.cli grpo --model "$OUT/sft/adapter" --episodes 1000 --out "$OUT/grpo" \
  --grpo-steps 200 --num-generations 8 --max-completion-length 2048 --learning-rate 1e-5 \
  --max-steps 6 --max-tool-calls 6 --gradient-checkpointing
# 4. serve base + adapters with vLLM and evaluate through the OpenAI-compatible API (prompt tool mode: the
#    server needs no tool parser; the agent writes and parses <tool_call> blocks itself)
vllm serve "$MODEL" --port 8000 --enable-lora --max-lora-rank 16 \
  --lora-modules sft="$OUT/sft/adapter" grpo="$OUT/grpo/adapter" &
VLLM_PID=$!
trap 'kill $VLLM_PID' EXIT
until curl -sf http://127.0.0.1:8000/v1/models >/dev/null; do sleep 5; done
for set in dense/test sparse/test; do
  for name in sft grpo; do
    recthinker evaluate --dataset ml-1m --set "$set" --ranker agent --model "http://127.0.0.1:8000/v1#$name" \
      --workers 32 --out "$OUT/eval-${set/\//-}-$name"
  done
  recthinker evaluate --dataset ml-1m --set "$set" --ranker agent --ranker zero-shot --ranker fixed-workflow \
    --model "http://127.0.0.1:8000/v1#$MODEL" --workers 32 --out "$OUT/eval-${set/\//-}-untrained"
  recthinker evaluate --dataset ml-1m --set "$set" --ranker teacher --out "$OUT/eval-${set/\//-}-teacher"
done
