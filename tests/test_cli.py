"""Bad input: one clear line naming the problem and the fix, exit code 2, nothing half-written."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from qeval.cli import app
from qeval.settings import resource_dir
from qeval.gate import GatePolicy

runner = CliRunner()


def _bad(args, match, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["compare", "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("qeval: error:"), res.output
    assert match in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".run*"))
    return lines[0]


@pytest.mark.parametrize("args,match", [
    (["--candidates", "int9"], "unknown variant 'int9'"),
    (["--base", "nf4"], "baseline must be one of"),
    (["--candidates", "int8,int8"], "may appear once"),
    (["--tasks", "no_such_task"], "unknown task 'no_such_task'"),
    (["--suite", "nope"], "unknown suite 'nope'"),
    (["--policy", "strictest"], "unknown gate policy"),
    (["--candidates", "int8:threshold"], "key=value"),
    (["--noise-floor", "fp64"], "--noise-floor 'fp64'"),
    (["--model", "/no/such/checkpoint"], "does not exist"),
    (["--model", "/no/such/model.gguf"], "does not exist"),
    (["--candidates", "gguf:q9_k"], "unknown GGUF type 'q9_k'"),
    (["--candidates", "gguf=/no/such/file.gguf"], "GGUF file /no/such/file.gguf does not exist"),
    (["--candidates", "gguf:q4_k_m,n_ctx=-1"], "n_ctx must be a non-negative integer"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, args, match):
    _bad(args, match, tmp_path)


def test_existing_run_directory_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    res = runner.invoke(app, ["compare", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "already exists" in res.output


def test_corrupt_gguf_is_bad_input(tmp_path):
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"NOPE" + b"\0" * 64)
    _bad(["--model", str(bogus)], "not a GGUF file", tmp_path)
    truncated = tmp_path / "trunc.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 40)
    _bad(["--model", str(truncated)], "cannot read this GGUF", tmp_path)


def test_gpu_only_option_without_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    res = runner.invoke(app, ["compare", "--device", "cuda", "--out", str(tmp_path / "r"),
                              "--model", "smollm2-135m"])
    assert res.exit_code == 2 and "no CUDA GPU" in res.output


def test_policy_file_with_a_typo_is_one_line(tmp_path):
    bad = tmp_path / "gate.yaml"
    bad.write_text("defaults:\n  max_choice_kl_means: 0.1\n")
    _bad(["--policy", str(bad)], "max_choice_kl_means", tmp_path)


def test_power_prints_the_detectable_drop_without_a_model(tmp_path):
    wide = {"COLUMNS": "200"}
    res = runner.invoke(app, ["power", "--discordance", "0.1", "--runs", str(tmp_path)], env=wide)
    assert res.exit_code == 0, res.output
    assert "clinical_core" in res.output and "underpowered" in res.output
    # clinical_core's detectable drop at 10% discordance (on its effective items when clustered),
    # and its high-risk items' row
    from qeval.power import power_table
    from qeval.tasks.registry import TaskRegistry

    task = TaskRegistry([resource_dir("tasks")]).load("clinical_core")
    policy = GatePolicy.from_yaml(resource_dir("configs") / "gates" / "default.yaml")
    overall, high = power_table([task], ["x"], policy)
    assert f"{100 * overall.mde:.1f} pp" in res.output and f"{100 * high.mde:.1f} pp" in res.output
    assert "clinical_core (risk: high)" in res.output
    res = runner.invoke(app, ["power", "--discordance", "0.001", "--runs", str(tmp_path)], env=wide)
    assert res.exit_code == 0 and "underpowered" not in res.output
    res = runner.invoke(app, ["power", "--tasks", "nope"])
    assert res.exit_code == 2 and "unknown task" in res.stderr


@pytest.mark.parametrize("cmd", [[], ["compare"], ["tasks"], ["variants"], ["prepare"], ["report"], ["power"], ["gate"], ["init"],
                                 ["plan"], ["calibrate"], ["calibration-sets"], ["calibration-manifest"]])
def test_every_command_has_help(cmd):
    res = runner.invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output


def test_tasks_and_variants_list(tmp_path):
    res = runner.invoke(app, ["tasks"])
    assert res.exit_code == 0 and "clinical_core" in res.output and "suite clinical-core" in res.output
    res = runner.invoke(app, ["variants"])
    assert res.exit_code == 0 and all(v in res.output for v in ["fp16", "int8", "int8wo", "nf4"])


def test_report_of_a_missing_run_is_bad_input(tmp_path):
    res = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "cannot read results" in res.stderr
