"""The command line as a user runs it: real subprocesses, exit codes, a kill in the middle."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


CLI = [sys.executable, "-m", "synthshot.cli"]


def synthshot(*args, **kwargs):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300, **kwargs)


def test_help_lists_the_verbs():
    result = synthshot("--help")
    assert result.returncode == 0
    for verb in ("run", "generate", "similarity", "models", "data", "config"):
        assert verb in result.stdout


def test_config_error_is_one_line_with_exit_code_2():
    result = synthshot("config", "--set", "generation.stpes=3")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: config: unknown key generation.stpes: did you mean generation.steps?"


def test_a_usage_error_is_a_usage_line_with_exit_code_2_not_a_traceback(tmp_path):
    result = synthshot("run")  # CONFIG missing
    assert result.returncode == 2 and "Missing argument 'config'" in result.stderr
    assert "Traceback" not in result.stderr
    result = synthshot("generate", "--shard")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_bad_yaml_exit_code_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1,\n")
    result = synthshot("run", bad)
    assert result.returncode == 2 and "is not valid YAML" in result.stderr
    assert "Traceback" not in result.stderr


def test_make_tiny(tmp_path):
    result = synthshot("models", "make-tiny", tmp_path / "kit", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "kit" / "kit.json").is_file()


def test_make_tiny_never_empties_a_folder_it_did_not_write(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"my photo")
    for extra in ([], ["--overwrite"]):
        result = synthshot("models", "make-tiny", folder, *extra)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "is not a tiny model kit" in result.stderr
        assert "holiday.jpg" in result.stderr
        assert sorted(p.name for p in folder.iterdir()) == ["holiday.jpg"]
        assert (folder / "holiday.jpg").read_bytes() == b"my photo"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"], "no staging folder left behind"
    # The same through a config's models.tiny_kit.
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'out'}\nmodels: {{tiny_kit: {folder}}}\ndata: {{demo: {{classes: 2}}}}\n")
    result = synthshot("run", config)
    assert result.returncode == 2 and "is not a tiny model kit" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["holiday.jpg"]


def test_a_config_that_is_not_utf8_is_a_one_line_error(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("output_dir: r\u00e9sultats\n".encode("latin-1"))
    result = synthshot("config", config)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is not UTF-8 text" in result.stderr and "latin1.yaml" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_preset_name_cannot_reach_outside_the_presets(tmp_path):
    outside = tmp_path / "evil.yaml"
    outside.write_text("output_dir: /tmp/should-not-be-read\n")
    import synthshot.config as config_module

    relative = os.path.relpath(outside.with_suffix(""), config_module.PRESETS_DIR)
    for name in (relative, str(outside.with_suffix(""))):
        result = synthshot("config", "--set", f"preset={name}")
        assert result.returncode == 2 and "unknown preset" in result.stderr, result.stderr
        assert "should-not-be-read" not in result.stdout


def test_class_names_with_control_characters_keep_errors_on_one_line(tmp_path):
    root = tmp_path / "data"
    from PIL import Image

    for name in ("red\nfox", "red fox", "cat\x1b[31m"):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / name / "0.png")
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'out'}\ndata: {{root: {root}, shots: 1}}\n")
    result = synthshot("data", "split", config)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "\x1b" not in result.stderr and "'red\\nfox'" in result.stderr, result.stderr
    # A message that names a path holding those characters.
    (root / "red fox").rename(root / "empty\nclass\x1b[2J")
    (root / "empty\nclass\x1b[2J" / "0.png").unlink()
    result = synthshot("data", "split", config)
    assert result.returncode == 2 and "holds no images" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "\x1b" not in result.stderr, result.stderr


def config_file(tmp_path, kit, out):
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(
        f"""
output_dir: {out}
offline: true
models: {{tiny_kit: {kit}}}
data: {{demo: {{classes: 2, images_per_class: 2, size: 32}}, shots: 2}}
generation: {{images_per_class: 6, steps: 2, height: 32, width: 32, batch_size: 2, precision: fp32}}
"""
    )
    return path


def set_folder(out: Path) -> Path:
    """The run's synthetic set: `synthetic-<key>` (one per settings)."""
    found = sorted(out.glob("synthetic-*"))
    assert len(found) <= 1, found
    return found[0] if found else out / "synthetic-none"


def manifest_lines(out: Path) -> int:
    manifest = set_folder(out) / "manifest.jsonl"
    return len(manifest.read_text().splitlines()) if manifest.exists() else 0


def images(out: Path) -> dict[str, bytes]:
    folder = set_folder(out)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted((folder / "synthetic").rglob("*.png"))}


def test_kill_and_rerun_gives_the_uninterrupted_result(tmp_path, tiny_kit):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    process = subprocess.Popen([*CLI, "generate", config_file(tmp_path, tiny_kit, killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while manifest_lines(killed) < 3 and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed: make it longer"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert 3 <= manifest_lines(killed) < 12

    resumed = synthshot("generate", config_file(tmp_path, tiny_kit, killed))
    assert resumed.returncode == 0, resumed.stderr
    assert "already there" in resumed.stdout
    full = synthshot("generate", config_file(tmp_path, tiny_kit, clean))
    assert full.returncode == 0, full.stderr

    assert manifest_lines(killed) == manifest_lines(clean) == 12
    got, want = images(killed), images(clean)
    assert got.keys() == want.keys()
    # Same batch size and machine: the same bytes (float tolerance would only matter across batch sizes).
    assert got == want
    leftovers = [p for p in killed.rglob(".synthshot-tmp-*")]
    assert leftovers == []


def test_failed_items_make_a_nonzero_exit(tmp_path, tiny_kit):
    out = tmp_path / "fails"
    config = config_file(tmp_path, tiny_kit, out)
    assert synthshot("data", "split", config).returncode == 0
    split = next((out / "splits").glob("*.json"))
    import json

    saved = json.loads(split.read_text())
    first = str(Path(saved["root"]) / saved["classes"]["circle"][0])
    Path(first).write_bytes(b"garbage")
    # Single mode: no similarity stage, which would stop at the bad file before any item.
    result = synthshot("generate", config, "--mode", "single")
    assert result.returncode == 2
    assert "failed" in result.stderr and first in result.stderr
    assert manifest_lines(out) > 0  # the other items were finished


def test_run_log_and_quiet_and_verbose(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'out'}\nstages: [data]\ndata: {{demo: {{classes: 2, images_per_class: 3, "
                      "size: 16}, shots: 1}\n")
    quiet = synthshot("-q", "run", config)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "" and "few-shot split" not in quiet.stderr
    log = (tmp_path / "out" / "run.log").read_text()
    assert "INFO synthshot.console: == data" in log and "few-shot split" in log
    assert "DEBUG synthshot.runs: stage data took" in log
    verbose = synthshot("-v", "run", config, "--force")
    assert verbose.returncode == 0 and "stage data took" in verbose.stderr and "== data" in verbose.stdout
    normal = synthshot("run", config, "--force")
    assert "stage data took" not in normal.stderr and "== data" in normal.stdout
    assert (tmp_path / "out" / "run.log").read_text().count("---- started") == 3  # appended run after run
