"""Crash safety of `lmtrain train --streaming`: SIGKILL after checkpoint k, `--resume`, and every loss after k
is bit-identical to the uninterrupted run's, with 0 and 2 data-loader workers and under torchrun with 2 ranks.

The stream is never replayed: the checkpoint holds each reader's place (shard, cursor, carried tokens),
and the resumed run's log says so. The machinery (fork server, SIGKILL, log reading) is tests/test_resume.py's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from tests.test_resume import (
    MAX_STEPS,
    RUN_TIMEOUT,
    SAMPLE,
    checkpoints,
    compare,
    final_weights_equal,
    last_logged_step,
    open_env,
    step_records,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from open_env(tmp_path_factory.mktemp("resume-streaming"))


def stream_file(env) -> Path:
    """Records of two lines each: one shard of many units, so two lanes can share it."""
    path = env.root / "stream.jsonl"
    if not path.exists():
        lines = (SAMPLE / "sonnets.txt").read_text(encoding="utf-8").splitlines()[:80]
        records = [json.dumps({"text": " ".join(lines[i : i + 2])}) for i in range(0, len(lines), 2)]
        path.write_text("\n".join(records) + "\n", encoding="utf-8")
    return path


def stream_argv(env, out: Path, mlm: bool, workers: int) -> List[str]:
    # a cache of its own: a stream read to its end leaves the token cache complete, and a later run on a
    # complete cache reads the cache instead of streaming (a killed run and its resumption share one)
    cache = str(out.parent / f"cache-{out.name}")
    argv = env.argv(out, mlm, workers) + ["--train_file", str(stream_file(env)), "--streaming"]
    return argv + ["--cache_dir", cache]


def kill_after(run, out: Path, k: int, name: str) -> None:
    """SIGKILL once checkpoint-k is complete and step k+1 is logged; drop checkpoints the kill was late for."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while not ((out / f"checkpoint-{k}" / "COMPLETE").is_file() and last_logged_step(out) >= k + 1):
        if run.poll() is not None:
            pytest.fail(f"{name}: the run ended ({run.code}) before it could be killed:\n{run.output()[-3000:]}")
        assert time.monotonic() < deadline, f"{name}: no checkpoint-{k} in {RUN_TIMEOUT}s"
        time.sleep(0.003)
    run.kill()
    for step, path in checkpoints(out).items():
        if step > k:
            import shutil

            shutil.rmtree(path)


@pytest.mark.parametrize(
    "mlm, workers, k",
    [
        pytest.param(False, 0, 6, id="clm-w0"),
        pytest.param(False, 2, 4, id="clm-w2"),
        pytest.param(True, 2, 6, id="mlm-w2"),
    ],
)
def test_streaming_sigkill_then_resume_logs_identical_losses(env, mlm, workers, k):
    name = f"stream-{'mlm' if mlm else 'clm'}-w{workers}"
    ref = env.root / f"{name}-reference"
    reference_run = env.run(stream_argv(env, ref, mlm, workers))
    assert "streaming" in reference_run.output(), reference_run.output()[-2000:]
    reference = step_records(ref)
    assert sorted(reference) == list(range(1, MAX_STEPS + 1))
    assert (ref / f"checkpoint-{MAX_STEPS}" / "data_position_0.pt").is_file()

    out = env.root / f"{name}-killed"
    kill_after(env.start(stream_argv(env, out, mlm, workers)), out, k, name)
    resumed = env.run(stream_argv(env, out, mlm, workers) + ["--resume"])
    assert f"resuming from {out / f'checkpoint-{k}'}" in resumed.output(), resumed.output()[-3000:]
    compare(step_records(out), reference, k, name)
    assert final_weights_equal(out, ref), f"{name}: the final weights differ from the uninterrupted run"


# ---- two ranks under torchrun -----------------------------------------------------------------------


def torchrun(env, argv: List[str], log: Path) -> subprocess.Popen:
    """`torchrun --nproc_per_node 2 -m lmtrain ...` in its own session, so SIGKILL reaches every rank at once."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"]
    run_env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), OMP_NUM_THREADS="1")
    run_env.update(TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    with open(log, "w") as f:
        return subprocess.Popen(
            [*cmd, "-m", "lmtrain", *argv], cwd=env.root, env=run_env, stdout=f, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def test_streaming_two_ranks_sigkill_then_resume_logs_identical_losses(env):
    k = 4
    ref = env.root / "stream-ranks-reference"
    argv = lambda out: stream_argv(env, out, False, 0)  # noqa: E731
    run = torchrun(env, argv(ref), env.root / "ranks-ref.out")
    assert run.wait(timeout=RUN_TIMEOUT) == 0, (env.root / "ranks-ref.out").read_text()[-3000:]
    reference = step_records(ref)
    assert sorted(reference) == list(range(1, MAX_STEPS + 1))
    positions = [torch_load(ref / f"checkpoint-{MAX_STEPS}" / f"data_position_{r}.pt") for r in range(2)]
    assert [p["world_size"] for p in positions] == [2, 2]
    # each rank reads its own lane (its own slice of the shards), and both read on from their own place
    assert [p["lanes"][0]["global_lane"] for p in positions] == [0, 1]

    out = env.root / "stream-ranks-killed"
    log = env.root / "ranks-kill.out"
    run = torchrun(env, argv(out), log)
    deadline = time.monotonic() + RUN_TIMEOUT
    while not ((out / f"checkpoint-{k}" / "COMPLETE").is_file() and last_logged_step(out) >= k + 1):
        assert run.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no checkpoint-{k} in {RUN_TIMEOUT}s"
        time.sleep(0.003)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    for step, path in checkpoints(out).items():
        if step > k:
            import shutil

            shutil.rmtree(path)
    log = env.root / "ranks-resume.out"
    run = torchrun(env, argv(out) + ["--resume"], log)
    assert run.wait(timeout=RUN_TIMEOUT) == 0, log.read_text()[-3000:]
    compare(step_records(out), reference, k, "2 ranks")
    assert final_weights_equal(out, ref)


def torch_load(path: Path):
    import torch

    return torch.load(path, weights_only=False)
