#!/usr/bin/env bash
# One sitting on a lent GPU machine (an H100/H200 image with CUDA torch and no Ray): install the carried
# wheels, then every GPU figure of the README, each stage bounded so that one failure keeps the others.
#
#   Here (once):  the Ray 2.60 wheel for cp312 without its Java jar, RLlib, Serve LLM and the dashboard's web
#                 build (42 MB), and the few pure-Python packages Ray Train/Serve need that the image lacks, in
#                 .whl/; all-MiniLM-L6-v2's config.json and tokenizer.json in .gpuenc/ (its 90 MB of weights do
#                 not fit the 64 MiB that travels: the encoder runs with random weights of that shape there).
#   There:        OUT=<folder> bash benchmarks/gpu_session.sh       (results: $OUT/gpu_*.json + logs)
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }

if [ -z "${SKIP_INSTALL:-}" ]; then  # SKIP_INSTALL=1: a smoke run where Ray is already installed
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD/platform:$PWD PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1
export PYTHONWARNINGS=ignore
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nproc; free -g | head -2
  python3 -c "import ray, torch, pydantic, pyarrow; print('ray', ray.__version__, 'torch', torch.__version__,
'cuda', torch.version.cuda, 'pydantic', pydantic.__version__, 'pyarrow', pyarrow.__version__)"; } 2>&1 | tee "$OUT/gpu_env.txt"
echo "[session] installed in $(elapsed) s"

STAGES=${STAGES:-llm,encoder,data}  # a later sitting may redo only some
want() { [[ ",$STAGES," == *",$1,"* ]]; }

# 1. the decoder (transformers' Llama) through the train stage (Ray Train), DDP and FSDP2, compiled and eager
want llm && { timeout "${LLM_TIMEOUT:-300}" python3 benchmarks/gpu_llm.py --size "${LLM_SIZE:-300m}" --sentences "${LLM_SENTENCES:-15000}" \
  --batch-size "${LLM_BATCH:-16}" --epochs "${LLM_EPOCHS:-1}" --log-every 5 --runs "${LLM_RUNS:-ddp+compile,fsdp+compile,ddp,fsdp}" \
  --deadline-s "${LLM_DEADLINE:-200}" --json "$OUT/gpu_llm.json" > "$OUT/gpu_llm.log" 2>&1
echo "[session] llm exit $? at $(elapsed) s"; grep -v -i -E "warn|^\s*$" "$OUT/gpu_llm.log" | tail -25; }

# 2. the encoder suite's half-precision variants vs fp32 (GPU and CPU)
want encoder && { timeout "${ENC_TIMEOUT:-90}" python3 benchmarks/gpu_encoder.py --model-dir .gpuenc --sentences 2000 \
  --json "$OUT/gpu_encoder.json" > "$OUT/gpu_encoder.log" 2>&1
echo "[session] encoder exit $? at $(elapsed) s"; tail -7 "$OUT/gpu_encoder.log"; }

# 3. the data stage on every core vs pandas in one process
want data && { timeout "${DATA_TIMEOUT:-150}" python3 benchmarks/data_prep.py --rows "${DATA_ROWS:-2000000,8000000}" \
  --json "$OUT/gpu_data_prep.json" > "$OUT/gpu_data_prep.log" 2>&1
echo "[session] data exit $? at $(elapsed) s"; grep -E "rows,|pandas, one|maas on Ray" "$OUT/gpu_data_prep.log"; }
