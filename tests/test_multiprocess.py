"""Two real processes on the CPU (torchrun, gloo), as a user launches them: the work is split, never
duplicated, and the result equals one process's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synthshot.io import read_jsonl

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
CLI = ["-m", "synthshot.cli"]


def config(tmp_path: Path, kit: Path, name: str, **extra) -> Path:
    tree = {
        "output_dir": str(tmp_path / name), "offline": True, "device": "cpu",
        "models": {"tiny_kit": str(kit)},
        "data": {"demo": {"classes": 3, "images_per_class": 6, "size": 32}, "shots": 2},
        "generation": {"mode": "dual", "images_per_class": 4, "steps": 2, "height": 32, "width": 32,
                       "batch_size": 2, "precision": "fp32"},
        "features": {"batch_size": 4, "multiscale": True, "scales": [5, 10]},
        "finetune": {"epochs": 1, "batch_size": 4, "steps_per_epoch": 2, "warmup_steps": 0, "num_workers": 0,
                     "precision": "fp32", "eval_batch_size": 8},
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(tree))
    return path


def launch(args, processes: int, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [*(TORCHRUN if processes > 1 else [sys.executable]), *CLI, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, **kwargs)


def set_folder(out: Path) -> Path:
    (found,) = sorted(out.glob("synthetic-*"))
    return found


def images_and_records(out: Path) -> tuple[dict[str, bytes], list[str]]:
    folder = set_folder(out)
    images = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted((folder / "synthetic").rglob("*.png"))}
    records, corrupt = read_jsonl(folder / "manifest.jsonl")
    assert corrupt == []
    # The demo data lives in each run's folder: its path is the one difference allowed.
    return images, sorted(json.dumps(r, sort_keys=True).replace(str(out), "<run>") for r in records)


def test_generate_on_two_processes_splits_the_work_and_equals_one_process(tmp_path, tiny_kit):
    one = launch(["generate", config(tmp_path, tiny_kit, "one")], 1)
    assert one.returncode == 0, one.stderr
    two = launch(["generate", config(tmp_path, tiny_kit, "two")], 2)
    assert two.returncode == 0, two.stderr[-3000:]
    # Each process made its half: 12 images, 6 each, and the main process merged the records.
    made = sorted(int(line.split("generated ")[1].split(" ")[0]) for line in two.stdout.splitlines()
                  if "generated " in line)
    assert made == [6, 6], two.stdout
    images_one, records_one = images_and_records(tmp_path / "one")
    images_two, records_two = images_and_records(tmp_path / "two")
    assert len(images_two) == 12 and images_two == images_one  # byte for byte
    assert len(records_two) == 12 and records_two == records_one
    assert not list(set_folder(tmp_path / "two").glob("manifest.rank*.jsonl"))
    # The split and the similarity were made once, by the main process, and equal one process's.
    for part in ("splits", "similarity"):
        for path in sorted((tmp_path / "one" / part).iterdir()):
            if path.suffix == ".safetensors":  # its header's key order may differ: compare the contents
                a, b = load_file(str(path)), load_file(str(tmp_path / "two" / part / path.name))
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), path.name
            elif path.suffix in (".json", ".csv"):
                ours = path.read_bytes().replace(str(tmp_path / "one").encode(), b"<run>")
                theirs = (tmp_path / "two" / part / path.name).read_bytes().replace(str(tmp_path / "two").encode(), b"<run>")
                assert theirs == ours, path.name


def test_features_on_two_processes_equal_one_process(tmp_path, tiny_kit):
    extra = {"stages": ["data", "features"], "generation": {"mode": "text", "images_per_class": 1}}
    for name, processes in (("one", 1), ("two", 2)):
        result = launch(["run", config(tmp_path, tiny_kit, name, **extra)], processes)
        assert result.returncode == 0, result.stderr[-3000:]
    caches = sorted(p.name for p in (tmp_path / "one" / "features").glob("*.safetensors"))
    assert caches and caches == sorted(p.name for p in (tmp_path / "two" / "features").glob("*.safetensors"))
    for name in caches:
        a = load_file(str(tmp_path / "one" / "features" / name))
        b = load_file(str(tmp_path / "two" / "features" / name))
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), name
    assert not list((tmp_path / "two" / "features").glob("*.part*"))  # the parts were merged and removed


def test_finetune_on_two_processes_trains_one_adapter(tmp_path, tiny_kit):
    """Data-parallel: each process takes its own batches (the global batch is twice one process's),
    so the weights differ from a one-process run; the run writes one adapter, one results.json and
    one line per step."""
    path = config(tmp_path, tiny_kit, "two", stages=["data", "finetune"], finetune={
        "epochs": 2, "batch_size": 4, "steps_per_epoch": 2, "warmup_steps": 0, "num_workers": 0, "precision": "fp32",
        "eval_batch_size": 8, "lam": 1.0})
    result = launch(["run", path], 2)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "two" / "finetune"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["results"][0]["metrics"]["num_images"] == 12  # 3 classes x 4 held-out images
    steps = [r for r in read_jsonl(out / "metrics.jsonl")[0] if r["kind"] == "step"]
    # 6 real images, 4 per batch and process, 2 processes: one step per epoch, one record per step.
    assert [r["step"] for r in steps] == [1, 2]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["epoch_2"]


def test_a_rank_killed_mid_run_then_a_rerun_completes_the_set(tmp_path, tiny_kit):
    path = config(tmp_path, tiny_kit, "killed", generation={
        "mode": "dual", "images_per_class": 8, "steps": 2, "height": 32, "width": 32, "batch_size": 1,
        "precision": "fp32"})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([*TORCHRUN, *CLI, "generate", str(path)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.time() + 300
    out = tmp_path / "killed"
    while time.time() < deadline and process.poll() is None:
        manifests = list(out.glob("synthetic-*/manifest.rank*.jsonl"))
        if sum(len(p.read_text().splitlines()) for p in manifests) >= 4:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before a rank could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    rerun = launch(["generate", path], 2)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    images, records = images_and_records(out)
    assert len(images) == 24 and len(records) == 24
    assert len({json.loads(r)["id"] for r in records}) == 24


@pytest.mark.parametrize("variables, message", [
    ({"WORLD_SIZE": "2", "RANK": "5"}, "do not fit"),
    ({"WORLD_SIZE": "two"}, "is not a whole number"),
])
def test_launcher_variables_that_make_no_sense_are_one_line_errors(tmp_path, tiny_kit, variables, message):
    env = {**os.environ, **variables}
    result = subprocess.run([sys.executable, *CLI, "generate", str(config(tmp_path, tiny_kit, "bad"))],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_a_sweep_as_a_job_array_equals_the_sweep_run_in_one_process(tmp_path, tiny_kit):
    """`--list-runs`, then each `--run-index` as its own process, both at once (they share one
    synthetic set, locked while one writes it), then `synthshot report`: the table and the results
    equal those of the sweep run by one `synthshot run`."""
    from synthshot.results import read_results
    from synthshot.runs import sweep_table

    extra = {"stages": ["data", "generate", "features", "prototypes", "evaluate", "report"],
             "generation": {"mode": "text", "images_per_class": 3, "steps": 2, "height": 32, "width": 32,
                            "batch_size": 1, "precision": "fp32"},
             "classifier": {"methods": ["prototypes", "text"]},
             "sweep": {"classifier.score": ["dot", "cosine"]}}
    whole = launch(["run", config(tmp_path, tiny_kit, "whole", **extra)], 1)
    assert whole.returncode == 0, whole.stderr[-3000:]

    path = config(tmp_path, tiny_kit, "array", **extra)
    listed = launch(["run", path, "--list-runs"], 1)
    assert listed.returncode == 0 and listed.stdout.splitlines() == ["0\tscore=dot", "1\tscore=cosine"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tasks = [subprocess.Popen([sys.executable, *CLI, "run", str(path), "--run-index", str(k)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in (0, 1)]
    outputs = [task.communicate(timeout=300) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs
    report = launch(["report", tmp_path / "array"], 1)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "array" / "report" / "index.html").is_file()

    assert sweep_table(tmp_path / "array") == sweep_table(tmp_path / "whole")
    for name in ("score=dot", "score=cosine"):
        a = read_results(tmp_path / "array" / name / "evaluate" / "results.json")["results"]
        b = read_results(tmp_path / "whole" / name / "evaluate" / "results.json")["results"]
        assert [e["metrics"] for e in a] == [e["metrics"] for e in b]
    (shared,) = (tmp_path / "array" / "shared").glob("synthetic-*")
    records = read_jsonl(shared / "manifest.jsonl")[0]
    assert len(records) == 9 and len({r["id"] for r in records}) == 9  # made once, not once per task


def test_a_run_index_out_of_range_is_a_one_line_error(tmp_path, tiny_kit):
    path = config(tmp_path, tiny_kit, "array", sweep={"classifier.score": ["dot", "cosine"]})
    result = launch(["run", path, "--run-index", "2"], 1)
    assert result.returncode == 2 and "--run-index 2 does not exist: this config has runs 0 to 1" in result.stderr
