"""Crash safety of `lmtrain train`: SIGKILL at step k, `--resume`, and the losses after k are bit-identical.

Every case drives the real command line (`lmtrain.cli.main`) in its own process and kills it with
SIGKILL, the one signal no handler can soften: what survives is only what was on disk. The cases:

* exactness: an uninterrupted reference run, then the same run killed right after checkpoint-k (and
  after it logged step k+1, which is lost) and resumed with `--resume`. Every loss logged after k,
  the grad norms, the learning rates, the final mean training loss and the final weights must equal
  the reference exactly (==). CLM and MLM, gradient accumulation 2, dataloader_num_workers 0 and 2,
  k in the middle of an epoch and k at an epoch boundary (where the last step of the epoch is a
  short tail step). GPT-2 and BERT keep their dropout, so the global RNG must come back too; MLM
  masks are random as well.
* saves: SIGKILL many times at random moments with a checkpoint after every step (most kills land
  inside a save); the latest complete checkpoint must always have all its files, load, and be
  resumed from; the run finished after all that must log exactly the reference losses.

Starting Python with torch and transformers costs seconds (tens on a loaded 2-core machine), so the
runs are forked from a helper process that imported them once (a "fork server"); each run is still a
separate process that runs `lmtrain.cli.main(argv)` from scratch and dies by SIGKILL. Set
LMTRAIN_RESUME_TEST_POPEN=1 to start every run as `python -m lmtrain train ...` instead.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
SAMPLE = SRC / "lmtrain" / "data" / "sample"

MAX_STEPS = 10  # not an epoch end: resuming a finished run must not start another step
STEPS_PER_EPOCH = 4  # checked against the run's own summary line
SAVE_STEPS = 2
GPT2 = ["--config_overrides", "n_layer=2,n_embd=32,n_head=2"]
BERT = [
    "--mlm",
    "--model_type",
    "bert",
    "--config_overrides",
    "num_hidden_layers=2,hidden_size=32,num_attention_heads=2,intermediate_size=64",
]
RUN_TIMEOUT = 300

# ---- running lmtrain in processes that can be SIGKILLed ------------------------------------------

_FORK_SERVER = textwrap.dedent(r"""
    import json, os, sys, traceback
    sys.path.insert(0, sys.argv[1])
    import torch, transformers                                   # the slow imports, paid once
    from transformers import BertForMaskedLM, GPT2LMHeadModel    # noqa: F401 (lazy modules)
    import lmtrain.cli
    from lmtrain.training import trainer                         # noqa: F401
    from lmtrain.data import pack, collators, bpe, token_cache   # noqa: F401

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": True})
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "spawn":
            sys.stdout.flush(); sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the run: a fresh process as far as lmtrain can tell
                code = 1
                try:
                    os.chdir(req["cwd"])
                    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(fd, 1); os.dup2(fd, 2); os.close(fd)
                    null = os.open(os.devnull, os.O_RDONLY); os.dup2(null, 0); os.close(null)
                    sys.argv = ["lmtrain", *req["argv"]]
                    code = lmtrain.cli.main(req["argv"])
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else 1
                except BaseException:
                    traceback.print_exc()
                finally:
                    try:
                        sys.stdout.flush(); sys.stderr.flush()
                    finally:
                        os._exit(code or 0)
            reply({"pid": pid})
        elif req["op"] == "wait":
            flags = 0 if req["block"] else os.WNOHANG
            pid, status = os.waitpid(req["pid"], flags)
            reply({"code": None if pid == 0 else os.waitstatus_to_exitcode(status)})
""")


class Run:
    """One lmtrain process: poll, wait, SIGKILL; stdout+stderr go to a file."""

    def __init__(
        self, server: Optional["ForkServer"], pid: int, log: Path, popen: Optional[subprocess.Popen] = None
    ) -> None:
        self.server, self.pid, self.log, self.popen = server, pid, log, popen
        self.code: Optional[int] = None

    def poll(self) -> Optional[int]:
        if self.code is None:
            self.code = self.popen.poll() if self.popen else self.server.wait(self.pid, block=False)
        return self.code

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"lmtrain did not finish in {timeout}s:\n{self.output()[-3000:]}")
            time.sleep(0.05)
        return self.code

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while self.poll() is None:  # reap it: nothing of it may still be writing afterwards
            time.sleep(0.005)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class ForkServer:
    def __init__(self, env: Dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER, str(SRC)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )
        assert self._read().get("ready")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the lmtrain fork server died")
        return json.loads(line)

    def _ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def start(self, argv: List[str], cwd: Path, log: Path) -> Run:
        return Run(self, self._ask(op="spawn", argv=argv, cwd=str(cwd), log=str(log))["pid"], log)

    def wait(self, pid: int, block: bool) -> Optional[int]:
        return self._ask(op="wait", pid=pid, block=block)["code"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class PopenStarter:
    def __init__(self, env: Dict[str, str]) -> None:
        self.env = env

    def start(self, argv: List[str], cwd: Path, log: Path) -> Run:
        f = open(log, "w")
        popen = subprocess.Popen(
            [sys.executable, "-m", "lmtrain", *argv],
            cwd=cwd,
            env=self.env,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        f.close()
        return Run(None, popen.pid, log, popen)

    def close(self) -> None:
        pass


# ---- the shared setup: one tokenizer, one train file, one token cache ------------------------------


class Env:
    def __init__(self, root: Path, starter) -> None:
        self.root, self.starter = root, starter
        self.cache = root / "cache"
        self.tokenizer = root / "tokenizer"
        self.train_file = root / "train.txt"
        self._refs: Dict[tuple, Dict[int, dict]] = {}
        self._n = 0

    def argv(self, out: Path, mlm: bool, workers: int, save_steps: int = SAVE_STEPS, keep: int = 3) -> List[str]:
        return [
            "train",
            "--train_file",
            str(self.train_file),
            "--tokenizer_name",
            str(self.tokenizer),
            "--cache_dir",
            str(self.cache),
            "--output_dir",
            str(out),
            *(BERT if mlm else GPT2),
            "--block_size",
            "32",
            "--per_device_train_batch_size",
            "4",
            "--gradient_accumulation_steps",
            "2",
            "--max_steps",
            str(MAX_STEPS),
            "--logging_steps",
            "1",
            "--save_strategy",
            "steps",
            "--save_steps",
            str(save_steps),
            "--save_total_limit",
            str(keep),
            "--learning_rate",
            "3e-3",
            "--validation_split_percentage",
            "0",
            "--eval_strategy",
            "no",
            "--dataloader_num_workers",
            str(workers),
            "--seed",
            "7",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
        ]

    def start(self, argv: List[str]) -> Run:
        self._n += 1
        return self.starter.start(argv, self.root, self.root / f"run-{self._n}.out")

    def run(self, argv: List[str]) -> Run:
        run = self.start(argv)
        code = run.wait()
        assert code == 0, f"lmtrain {' '.join(argv)} exited with {code}:\n{run.output()[-4000:]}"
        return run

    def reference(self, mlm: bool, workers: int) -> Dict[int, dict]:
        """Records of the uninterrupted run (computed once per configuration)."""
        key = (mlm, workers)
        if key not in self._refs:
            out = self.root / f"ref-{'mlm' if mlm else 'clm'}-w{workers}"
            run = self.run(self.argv(out, mlm, workers))
            assert f"({STEPS_PER_EPOCH} per epoch" in run.output(), run.output()
            recs = step_records(out)
            assert sorted(recs) == list(range(1, MAX_STEPS + 1))
            self._refs[key] = recs
        return self._refs[key]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    yield from open_env(tmp_path_factory.mktemp("resume"))


def open_env(root: Path):
    """The shared setup in `root` (a generator: the fork server stops after its one yield)."""
    sys.path.insert(0, str(SRC))
    from lmtrain.data.bpe import train_bpe_tokenizer

    # One tokenizer for every run, trained on the whole packaged corpus.
    tok = train_bpe_tokenizer(sorted(SAMPLE.glob("*.txt")), vocab_size=300)
    tok.save_pretrained(str(root / "tokenizer"))
    # 38 lines of the sonnets: ~900 tokens -> 28 CLM blocks of 32 = 7 batches of 4 = 4 optimizer steps an
    # epoch with accumulation 2, the 4th a one-batch tail; 29 MLM blocks = 8 batches = 4 full steps.
    lines = (SAMPLE / "sonnets.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    (root / "train.txt").write_text("".join(lines[:38]), encoding="utf-8")

    run_env = dict(
        os.environ,
        PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        TRANSFORMERS_VERBOSITY="error",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    starter = PopenStarter(run_env) if os.environ.get("LMTRAIN_RESUME_TEST_POPEN") else ForkServer(run_env)
    e = Env(root, starter)
    try:
        yield e
    finally:
        starter.close()


# ---- reading what a run left on disk ---------------------------------------------------------------


def read_log(out: Path) -> List[dict]:
    """log.jsonl's records ([] before the first one); a line cut short by SIGKILL is skipped."""
    from lmtrain.runlog import read_log as read_jsonl

    path = out / "log.jsonl"
    return read_jsonl(path)[0] if path.exists() else []


def step_records(out: Path) -> Dict[int, dict]:
    """The last record logged for each step (a killed run logs steps that its resumption logs again)."""
    return {r["step"]: r for r in read_log(out) if "loss" in r}


def last_logged_step(out: Path) -> int:
    steps = [r["step"] for r in read_log(out) if "loss" in r]
    return max(steps, default=0)


def checkpoints(out: Path) -> Dict[int, Path]:
    found = {}
    if out.is_dir():
        for p in out.iterdir():
            if p.name.startswith("checkpoint-") and p.name[len("checkpoint-") :].isdigit():
                found[int(p.name[len("checkpoint-") :])] = p
    return found


def saves_in_progress(out: Path) -> List[str]:
    return (
        [p.name for p in out.iterdir() if p.name.startswith(".checkpoint-") or ".old-" in p.name]
        if out.is_dir()
        else []
    )


def assert_usable_checkpoint(path: str) -> int:
    """Everything resuming reads is there and loads; returns the checkpoint's step."""
    import torch
    from safetensors.torch import load_file

    p = Path(path)
    names = {x.name for x in p.iterdir()}
    need = {
        "COMPLETE",
        "config.json",
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
        "training_args.json",
        "tokenizer.json",
    }
    assert need <= names, f"{p} lacks {sorted(need - names)}"
    assert load_file(str(p / "model.safetensors"))
    assert torch.load(p / "optimizer.pt", map_location="cpu", weights_only=False)["state"]
    torch.load(p / "scheduler.pt", weights_only=False)
    assert "cpu" in torch.load(p / "rng_state.pth", weights_only=False)
    state = json.loads((p / "trainer_state.json").read_text())
    step = int(p.name.split("-")[1])
    assert state["global_step"] == step, (p, state["global_step"])
    assert json.loads((p / "COMPLETE").read_text())["step"] == step
    return step


def compare(resumed: Dict[int, dict], reference: Dict[int, dict], after: int, what: str) -> None:
    """Exact equality of loss (and grad norm, learning rate) for every step after `after`."""
    want = {s: r for s, r in reference.items() if s > after}
    got = {s: r for s, r in resumed.items() if s > after}
    assert sorted(got) == sorted(want), f"{what}: steps logged after {after}: {sorted(got)} != {sorted(want)}"
    for key in ("loss", "grad_norm", "learning_rate"):
        diff = [(s, got[s].get(key), want[s].get(key)) for s in sorted(want) if got[s].get(key) != want[s].get(key)]
        assert not diff, f"{what}: {key} differs from the uninterrupted run at (step, resumed, reference) {diff}"


def final_weights_equal(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def train_loss(out: Path) -> Optional[float]:
    finals = [r for r in read_log(out) if "train_loss" in r]
    return finals[-1]["train_loss"] if finals else None


# ---- exactness after SIGKILL at step k --------------------------------------------------------------

CASES = [
    # (mlm, workers, k): k=6 is the middle of epoch 2; k=4 and k=8 end epochs 1 and 2
    pytest.param(False, 0, 6, id="clm-ga2-w0-mid-epoch"),
    pytest.param(False, 0, 4, id="clm-ga2-w0-epoch-boundary"),
    pytest.param(False, 2, 6, id="clm-ga2-w2-mid-epoch"),
    pytest.param(False, 2, 8, id="clm-ga2-w2-epoch-boundary"),
    pytest.param(True, 0, 6, id="mlm-ga2-w0-mid-epoch"),
    pytest.param(True, 2, 4, id="mlm-ga2-w2-epoch-boundary"),
    # killed after the last checkpoint, while the run saves its final model: resuming must add no step
    pytest.param(False, 0, MAX_STEPS, id="clm-ga2-w0-end-of-run"),
]


@pytest.mark.parametrize("mlm, workers, k", CASES)
def test_sigkill_after_checkpoint_k_then_resume_logs_identical_losses(env, mlm, workers, k):
    reference = env.reference(mlm, workers)
    name = f"{'mlm' if mlm else 'clm'}-w{workers}-k{k}"
    out = env.root / name
    argv = env.argv(out, mlm, workers)

    run = env.start(argv)
    deadline = time.monotonic() + RUN_TIMEOUT
    end_of_run = k == MAX_STEPS
    while True:  # kill once checkpoint-k is complete and step k+1 is logged (so it is lost)
        if (out / f"checkpoint-{k}").is_dir() and last_logged_step(out) >= min(k + 1, MAX_STEPS):
            run.kill()
            break
        if run.poll() is not None:
            if end_of_run and run.code == 0:
                break  # it finished before the kill: then this is `--resume` of a finished run
            pytest.fail(f"{name}: the run ended ({run.code}) before it could be killed:\n{run.output()[-3000:]}")
        assert time.monotonic() < deadline, f"{name}: no checkpoint-{k} in {RUN_TIMEOUT}s"
        time.sleep(0.003)
    assert run.code == -signal.SIGKILL or (end_of_run and run.code == 0), run.code
    # The kill may come a little late on a busy machine; a checkpoint written after k would only move the
    # resume point, so drop it to resume from k as this case intends (the log keeps the lost steps).
    for step, path in checkpoints(out).items():
        if step > k:
            shutil.rmtree(path)
    assert (out / f"checkpoint-{k}" / "COMPLETE").is_file()
    assert_usable_checkpoint(str(out / f"checkpoint-{k}"))
    assert end_of_run or last_logged_step(out) > k

    resumed = env.run(argv + ["--resume"])
    if not end_of_run:
        assert f"resuming from {out / f'checkpoint-{k}'}" in resumed.output(), resumed.output()[-3000:]
    compare(step_records(out), reference, k, name)
    ref_out = env.root / f"ref-{'mlm' if mlm else 'clm'}-w{workers}"
    if not (end_of_run and train_loss(out) is None):
        assert train_loss(out) == train_loss(ref_out), f"{name}: train_loss {train_loss(out)} != {train_loss(ref_out)}"
    assert final_weights_equal(out, ref_out), f"{name}: the final weights differ from the uninterrupted run"


def test_worker_count_does_not_change_losses(env):
    """Per-batch seeds: 0 and 2 dataloader workers give the same losses (CLM and MLM)."""
    for mlm in (False, True):
        compare(env.reference(mlm, 2), env.reference(mlm, 0), 0, f"{'mlm' if mlm else 'clm'} workers 2 vs 0")


# ---- SIGKILL during saves ---------------------------------------------------------------------------


def test_sigkill_at_random_moments_never_leaves_an_unusable_latest_checkpoint(env):
    """A checkpoint after every step, SIGKILL at random moments (mostly inside a save), again and again."""
    from lmtrain.training.checkpoint import latest_checkpoint

    reference = env.reference(False, 0)
    out = env.root / "save-kills"
    argv = env.argv(out, mlm=False, workers=0, save_steps=1, keep=2)
    rng = random.Random(int(os.environ.get("LMTRAIN_RESUME_TEST_SEED", "1234")))
    kills = mid_save = 0
    best = 0
    finished = False
    for attempt in range(8):
        resume = latest_checkpoint(str(out)) is not None
        before = len(read_log(out))
        run = env.start(argv + (["--resume"] if resume else []))
        # most kills aim inside the n-th save this process starts, the rest at any moment of its training
        target_save = rng.randint(1, 2) if rng.random() < 0.7 else 0
        delay = rng.uniform(0.0, 0.02) if target_save else rng.uniform(0.0, 0.3)
        deadline = time.monotonic() + RUN_TIMEOUT
        training, seen = False, set()
        while run.poll() is None:
            assert time.monotonic() < deadline, f"attempt {attempt}: no progress:\n{run.output()[-3000:]}"
            training = training or len(read_log(out)) > before  # this process has logged a step
            if training:
                seen |= {n for n in saves_in_progress(out) if n.endswith(f"-{run.pid}")}
                if len(seen) >= target_save:
                    time.sleep(delay)
                    run.kill()
                    break
            time.sleep(0.002)
        if run.code == 0:
            finished = True
            break
        assert run.code == -signal.SIGKILL, f"attempt {attempt}: exit {run.code}:\n{run.output()[-3000:]}"
        kills += 1
        mid_save += bool(saves_in_progress(out))
        latest = latest_checkpoint(str(out))
        if latest is None:  # killed while writing the very first checkpoint: the next run starts afresh
            assert best == 0, f"attempt {attempt}: checkpoint-{best} vanished; no complete checkpoint is left"
            continue
        step = assert_usable_checkpoint(latest)
        assert step >= best, f"attempt {attempt}: latest checkpoint went back from {best} to {step}"
        best = step
    print(f"{kills} kills, {mid_save} inside a save; the latest checkpoint was always usable")
    assert kills >= 3 and mid_save >= 1, f"only {kills} kills landed, {mid_save} inside a save"
    if not finished:
        resumed = env.run(argv + (["--resume"] if best else []))
        assert "resuming from" in resumed.output() or not best
    assert not saves_in_progress(out), f"half-written saves left behind: {saves_in_progress(out)}"
    # every step's last record is what an uninterrupted run (saving every 2 steps) logs: saving is invisible
    compare(step_records(out), reference, 0, f"after {kills} kills ({mid_save} inside a save)")
    assert final_weights_equal(out, env.root / "ref-clm-w0")
