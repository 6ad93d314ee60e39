#!/usr/bin/env bash
# GPU check of synthshot's speed figures, for a machine with one CUDA GPU and no network (nothing is
# downloaded: every model is built with random weights from its real configuration). About 6 minutes
# on a current datacenter GPU; each part has its own time limit, so the whole stays under 8 minutes.
#
#   bash benchmarks/device_check.sh                 # from the repository root, with the project's environment
#   PYTHON=python OUT=/tmp/check bash benchmarks/device_check.sh
#
# Parts (each its own process, JSON under $OUT):
#   1. bench_speed.py: seconds per image of DIPSY's dual guidance, 50 steps, fp16, 512x512 (64x64
#      latents), full-size SD-1.5 U-Net with two ip-adapter-plus adapters, batch 1 and 8; ways:
#      default, guidance interval [0.25, 0.75], DeepCache k=3, both, and the default way compiled
#      (torch.compile, compiled during the warm-up); U-Net evaluations per image and peak memory.
#   2. bench_features.py: CLIP ViT-B/16 feature extraction images/s, single- and multi-scale.
#   3. bench_finetune.py: LoRA fine-tuning images/s of ViT-B/16 (bf16 autocast), three ways.
# Then one table of everything with the peak GPU memory of each part.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python
OUT=${OUT:-$(mktemp -d -t synthshot-device-check-XXXX)}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONUNBUFFERED=1

"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "device_check.sh: no CUDA GPU visible")' || exit 2
"$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, CUDA {torch.version.cuda}")'
status=0
run() {  # run LIMIT NAME ARGS...: one part under a time limit; a failure is reported and the rest goes on
  local limit=$1 name=$2; shift 2
  echo; echo "### $name (limit ${limit} s)"
  local start=$SECONDS
  timeout "$limit" "$PYTHON" "$@" 2>&1 | tee "$OUT/$name.log"
  local code=${PIPESTATUS[0]}
  echo "### $name: exit $code after $((SECONDS - start)) s"
  [ "$code" -eq 0 ] || status=1
}
run 300 speed benchmarks/bench_speed.py --steps 50 --batch 1 8 --repeats 2 --compile --json "$OUT/speed.json"
run 75 features benchmarks/bench_features.py --images 256 --repeats 2 --json "$OUT/features.json"
run 75 finetune benchmarks/bench_finetune.py --steps 10 --json "$OUT/finetune.json"

"$PYTHON" - "$OUT" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])


def load(name):
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


rows = []
speed = load("speed")
if speed:
    for r in speed["rows"]:
        e = r["evaluations_per_image"]
        evals = f"{e['full']}" + (f"+{e['shallow']} shallow" if e["shallow"] else "")
        rows.append((f"dual guidance {r['steps']} steps fp16 512px, batch {r['batch']}, {r['way']}",
                     f"{r['fastest_seconds_per_image']:.3f} s/image", f"{r['ratio']:.2f}x vs default, U-Net evals {evals}",
                     r["peak_gib"]))
features = load("features")
if features:
    for r in features["results"]:
        rows.append((f"CLIP features, {r['name']}", f"{r['single_images_per_s']:.0f} / {r['multi_images_per_s']:.0f} img/s",
                     "single-scale / multi-scale (10 crops)", features.get("peak_cuda_gib")))
finetune = load("finetune")
if finetune:
    for r in finetune["results"]:
        rows.append((f"LoRA fine-tuning, {r['model']}, batch {r['batch']}",
                     f"{r['cached_images_per_s']:.0f} / {r['uncached_images_per_s']:.0f} / {r['text-lora_images_per_s']:.0f} img/s",
                     "vision LoRA cached text / uncached / both towers", finetune.get("peak_cuda_gib")))
missing = [name for name, data in (("speed", speed), ("features", features), ("finetune", finetune)) if data is None]
width = max([len(r[0]) for r in rows] + [20])
print("\n" + "=" * (width + 90))
print(f"{'what':<{width}}  {'figure':<22}{'notes':<52}{'peak GPU GiB':>12}")
for what, figure, notes, peak in rows:
    print(f"{what:<{width}}  {figure:<22}{notes:<52}{'' if peak is None else f'{peak:.2f}':>12}")
if missing:
    print(f"MISSING (failed or timed out, see {out}/<part>.log): {', '.join(missing)}")
print(f"JSON and logs: {out}")
EOF
exit $status
