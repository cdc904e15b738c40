#!/usr/bin/env bash
# One 8-GPU node: Ray retrieval (CPU) + vLLM server (GPU 7) + ZeRO-3 training (GPUs 0-6). See SCALING.md.
# Multi-node: run `ray start --address=HEAD:6379` on the other nodes before step 2, and launch accelerate per node.
set -euo pipefail
CORPUS=${CORPUS:-data/wiki-18.jsonl}          # 21M passages, FlashRAG/Search-R1 wiki-18 jsonl
INDEX=${INDEX:-indexes/wiki18-tantivy}
REPLICAS=${REPLICAS:-8}                       # searcher replicas; SCALING.md derives how many a step needs
MODEL=${MODEL:-Qwen/Qwen2.5-7B-Instruct}

# 1. Build the on-disk index once (constant memory with tantivy; writes a manifest bound to the corpus sha256).
[ -f "$INDEX/igpo_index.json" ] || igpo-index build --corpus "$CORPUS" --engine tantivy --out "$INDEX"

# 2. Ray head + the Search-R1 /retrieve endpoint on Ray Serve (replicas memory-map the same index).
ray start --head --port=6379 --num-gpus=0 --include-dashboard=false
igpo-retriever --ray --ray-address auto --replicas "$REPLICAS" --index "$INDEX" --corpus "$CORPUS" \
    --host 0.0.0.0 --port 8000 &
until curl -sf http://127.0.0.1:8000/health >/dev/null; do sleep 2; done

# 3. vLLM generation server on the last GPU (TRL server mode).
CUDA_VISIBLE_DEVICES=7 trl vllm-serve --model "$MODEL" --port 8001 --gpu-memory-utilization 0.9 &
until curl -sf http://127.0.0.1:8001/health/ >/dev/null; do sleep 5; done

# 4. ZeRO-3 training on GPUs 0-6 (env_kwargs in the YAML point at the Ray Serve endpoint).
CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6 accelerate launch --config_file configs/scale/accelerate_zero3.yaml \
    -m igpo_trainer.cli --config configs/scale/igpo_qwen2.5_7b_ray.yaml \
    --env_kwargs "{\"questions\": \"data/train.parquet\", \"retriever_url\": \"http://127.0.0.1:8000/retrieve\"}"
