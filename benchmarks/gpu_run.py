"""One device run: extraction strategies (dift / original / ours / ours-cached) at 768² and 512², E = 1 and 8,
in bf16 and fp16, plus one training step (batch 3 pairs, 768²) with and without gradient checkpointing, on SD 2-1's
full-size architecture with random weights. Writes JSON to the folder given as argv[1]."""

import copy
import json
import sys
import time
from pathlib import Path

import torch

from sd4match_utils.bench import bench_extraction, bench_train_step, environment, matmul_tflops
from sd4match_utils.models import SDModel
from sd4match_utils.tiny import build_sd21_random_components

out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench_out")
out.mkdir(parents=True, exist_ok=True)
quick = "--quick" in sys.argv
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
t0 = time.time()
parts = build_sd21_random_components(seed=0)
print(f"built SD 2-1 random in {time.time() - t0:.1f}s", flush=True)
result = {"environment": environment(dev), "matmul_tflops": {}, "extraction": [], "train_step": []}
for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
    result["matmul_tflops"][precision] = matmul_tflops(dev, dtype)
    moved = {k: (copy.deepcopy(v).to(dev, dtype) if k in ("unet", "vae", "text_encoder") else v) for k, v in parts.items()}
    sd = SDModel(**moved, identity={"model": "sd21-random", "fingerprint": "random", "precision": precision},
                 device=dev, dtype=dtype)
    sizes = (768,) if quick else (768, 512)
    rows = bench_extraction(sd, img_sizes=sizes, ensembles=(1, 8), repeats=3)
    result["extraction"] += rows
    for r in rows:
        print(precision, r, flush=True)
    for ckpt in (False, True):
        r = bench_train_step(sd, batch=3, img_size=768, gradient_checkpointing=ckpt, repeats=3)
        result["train_step"].append(r)
        print(r, flush=True)
    del sd, moved
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    (out / "gpu_bench.json").write_text(json.dumps(result, indent=2, default=str))
print(f"total {time.time() - t0:.1f}s")
