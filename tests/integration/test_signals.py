"""SIGTERM/SIGINT: the step finishes, a checkpoint is saved, exit 0 with how to resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.test_cli import TINY, lmtrain


def wait_for_log(path, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and any('"loss"' in line for line in path.read_text().splitlines()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited early: {proc.communicate()}")
        time.sleep(0.1)
    raise AssertionError("no log record in time")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_exits_zero_then_resumes(tmp_path, subprocess_env, sig):
    out = tmp_path / "run"
    args = [
        "train",
        "--output_dir",
        str(out),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--max_steps",
        "100000",
        "--save_strategy",
        "no",
        "--eval_strategy",
        "no",
        *TINY,
        "--logging_steps",
        "1",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmtrain", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env,
    )
    wait_for_log(out / "log.jsonl", proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "--resume" in stdout and "saved" in stdout
    ckpts = sorted(out.glob("checkpoint-*"))
    assert len(ckpts) == 1 and (ckpts[0] / "COMPLETE").exists()
    step = int(ckpts[0].name.split("-")[1])
    resumed = lmtrain(
        [
            "train",
            "--output_dir",
            str(out),
            "--cache_dir",
            str(tmp_path / "cache"),
            "--resume",
            "--max_steps",
            str(step + 3),
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
            *TINY,
        ],
        subprocess_env,
    )
    assert f"resuming from {ckpts[0]}" in resumed.stdout
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == step + 3
