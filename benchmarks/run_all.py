"""Run every synthshot benchmark and print one table of the ratios they measured.

    python benchmarks/run_all.py            # full settings (about 20 minutes on a 2-core CPU)
    python benchmarks/run_all.py --quick    # smaller sizes and fewer repeats (about 5 minutes)

Each benchmark runs in its own process (a clean start, as a user runs it), writes its figures as
JSON, and keeps printing its own detailed table; this script then collects one line per ratio.
Nothing is hard-coded: every number comes from this run.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# benchmark -> (extra arguments for --quick, function turning its JSON into table rows)
BENCHMARKS = {
    "bench_generation.py": ["--quick"],
    "bench_speed.py": ["--quick"],
    "bench_features.py": ["--images", "4", "--repeats", "1"],
    "bench_finetune.py": ["--quick"],
}


def generation_rows(data: dict) -> list[tuple[str, str, float, str]]:
    return [
        (r['name'], "official 3 calls / gated 1 call", r["ratio"],
         f"{r['official_median_s']:.3f} s vs {r['gated_median_s']:.3f} s")
        for r in data["steps"]
    ]


def speed_rows(data: dict) -> list[tuple[str, str, float, str]]:
    def evaluations(e: dict) -> str:
        return f"{e['full']} full" + (f" + {e['shallow']} shallow" if e["shallow"] else "")

    return [
        (f"generation per image, {r['way']}, {r['steps']} steps, {r['latent']}x{r['latent']}, batch {r['batch']}",
         "default / option, equal steps", r["ratio"],
         f"{r['fastest_seconds_per_image']:.3f} s/image, U-Net evaluations {evaluations(r['evaluations_per_image'])}")
        for r in data["rows"] if r["key"] != "default"
    ]


def features_rows(data: dict) -> list[tuple[str, str, float, str]]:
    return [
        (f"feature extraction, {r['name']}", "multi-scale / single-scale cost", r["ratio"],
         f"{r['single_images_per_s']:.2f} vs {r['multi_images_per_s']:.2f} img/s")
        for r in data["results"]
    ]


def finetune_rows(data: dict) -> list[tuple[str, str, float, str]]:
    rows = []
    for r in data["results"]:
        rows.append((f"fine-tuning step, {r['model']}", "cached / uncached text features", r["cached_vs_uncached"],
                     f"{r['cached_images_per_s']:.1f} vs {r['uncached_images_per_s']:.1f} img/s"))
        rows.append((f"fine-tuning step, {r['model']}", "vision-only LoRA / both towers", r["cached_vs_text_lora"],
                     f"{r['cached_images_per_s']:.1f} vs {r['text-lora_images_per_s']:.1f} img/s"))
    return rows


ROWS = {"bench_generation.py": generation_rows, "bench_speed.py": speed_rows, "bench_features.py": features_rows, "bench_finetune.py": finetune_rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    parser.add_argument("--only", nargs="*", default=None, help="run only these benchmark files")
    args = parser.parse_args(argv)

    rows: list[tuple[str, str, float, str]] = []
    failed = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for script, quick_args in BENCHMARKS.items():
            if args.only and script not in args.only:
                continue
            out = Path(tmp) / f"{script}.json"
            command = [sys.executable, str(HERE / script), "--json", str(out), *(quick_args if args.quick else [])]
            print(f"\n### {' '.join(command[1:])}", flush=True)
            code = subprocess.call(command)
            if code != 0 or not out.is_file():
                failed.append(script)
                continue
            rows += ROWS[script](json.loads(out.read_text()))

    print(f"\nall benchmarks ({platform.processor() or platform.machine()}, {time.perf_counter() - started:.0f} s):")
    width = max((len(r[0]) for r in rows), default=10)
    header = f"{'what':<{width}}  {'ratio of':<34} {'ratio':>7}  figures"
    print(header)
    print("-" * len(header))
    for what, of, ratio, figures in rows:
        print(f"{what:<{width}}  {of:<34} {ratio:>6.2f}x  {figures}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
