"""torchrun on CPU (gloo): 2 processes with batch B match 1 process with batch 2B; checkpoints resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def run(cmd, env):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process with batch 8 (2 x 4)."""
    import os

    from tests.conftest import SRC

    out = tmp_path_factory.mktemp("one")
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    run([sys.executable, str(HERE / "_ddp_run.py"), str(out), "8", "6", "fresh"], env)
    return json.loads((out / "losses.json").read_text())


def test_ddp_two_processes_match_one_with_double_batch_and_resume(tmp_path, subprocess_env, one_process):
    env = dict(subprocess_env, OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    run([*torchrun, str(HERE / "_ddp_run.py"), str(tmp_path / "two"), "4", "6", "fresh"], env)
    one = one_process
    two = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert one.keys() == two.keys()
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6), step
    ckpt = tmp_path / "two" / "checkpoint-6"
    assert (ckpt / "rng_state_0.pth").exists() and (ckpt / "rng_state_1.pth").exists()
    # a checkpoint saved under 2 processes resumes under 2
    run([*torchrun, str(HERE / "_ddp_run.py"), str(tmp_path / "two"), "4", "8", "resume"], env)
    resumed = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert set(resumed) >= {"7", "8"}


def test_sigterm_on_one_rank_stops_every_rank_after_the_same_step(tmp_path, subprocess_env):
    """The ranks agree on stopping at the next step that logs or saves (no per-step host sync)."""
    env = dict(subprocess_env, OMP_NUM_THREADS="1", LMTRAIN_TEST_SIGTERM="1:1", LMTRAIN_TEST_LOGGING_STEPS="3")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29537"]
    proc = run([*torchrun, str(HERE / "_ddp_run.py"), str(tmp_path / "two"), "4", "6", "fresh"], env)
    assert "stopped by SIGTERM (on another rank) after step 2" in proc.stdout  # rank 0 heard it from rank 1
    state = json.loads((tmp_path / "two" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and not (tmp_path / "two" / "checkpoint-3").exists()
    assert (tmp_path / "two" / "checkpoint-2" / "rng_state_1.pth").exists()


def test_fsdp_two_processes_match_one_and_save_a_loadable_model(tmp_path, subprocess_env, one_process):
    env = dict(subprocess_env, OMP_NUM_THREADS="1", LMTRAIN_TEST_FSDP="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    run([*torchrun, str(HERE / "_ddp_run.py"), str(tmp_path / "fsdp"), "4", "6", "fresh"], env)
    one = one_process
    two = json.loads((tmp_path / "fsdp" / "losses.json").read_text())
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6), step
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "final")
    run([*torchrun, str(HERE / "_ddp_run.py"), str(tmp_path / "fsdp"), "4", "8", "resume"], env)
    assert set(json.loads((tmp_path / "fsdp" / "losses.json").read_text())) >= {"7", "8"}


def test_cli_under_torchrun(tmp_path, subprocess_env):
    """The README's `torchrun ... -m lmtrain train` form, on CPU with gloo."""
    from tests.integration.test_cli import TINY

    env = dict(subprocess_env, OMP_NUM_THREADS="1")
    out = tmp_path / "run"
    run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29535",
            "-m",
            "lmtrain",
            "train",
            "--output_dir",
            str(out),
            "--cache_dir",
            str(tmp_path / "cache"),
            "--max_steps",
            "4",
            "--save_steps",
            "2",
            "--eval_strategy",
            "no",
            *TINY,
        ],
        env,
    )
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    lines = (out / "log.jsonl").read_text().splitlines()
    assert len([x for x in lines if '"loss"' in x]) == len({json.loads(x)["step"] for x in lines if '"loss"' in x})
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)
