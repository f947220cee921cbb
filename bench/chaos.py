#!/usr/bin/env python3
"""Chaos benchmark: SIGKILL `lmtrain train` at random moments, resume it, and check nothing was lost.

One uninterrupted reference run, then --runs lineages. Each starts the same run afresh, SIGKILLs it
at a random moment after its first checkpoint (a checkpoint after every step, on a model big enough
that saving takes about half of each step, so many kills land inside a save), checks the latest
complete checkpoint, and resumes it with `--resume` to the end. Figures:

  unusable checkpoints  latest checkpoint missing, missing a file, not loadable, not resumed from, or
                        the resumed run failed or its loss curve differs (target 0)
  exact curves          lineages whose loss for every step (the last record logged for it) equals the
                        reference bit for bit, with no step beyond it (target all)
  start -> first step   Popen to the `time` of the process's first record in log.jsonl (one optimizer
                        step done, `--logging_steps 1`), fresh starts vs resumes (target <= 1.2x)

    python bench/chaos.py                 # 20 lineages, one at a time (8-10 minutes on 2 cores)
    python bench/chaos.py --runs 5 --jobs 1 --seed 3 --json chaos.json

Every process is a real `python -m lmtrain train ...` with OMP_NUM_THREADS=--threads; nothing is
added to lmtrain. Exit status 1 when a correctness target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
SAMPLE = SRC / "lmtrain" / "data" / "sample"
sys.path.insert(0, str(SRC))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=20, help="lineages to kill and resume")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments (training uses --train_seed)")
    p.add_argument("--jobs", type=int, default=1, help="lineages run at the same time (timings are cleaner at 1)")
    p.add_argument(
        "--save_bias",
        type=float,
        default=0.5,
        help="fraction of lineages whose kill waits for a save to start, then lands 0-60 ms into it",
    )
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each lmtrain process")
    p.add_argument("--max_steps", type=int, default=10)
    p.add_argument("--save_steps", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="dataloader_num_workers")
    p.add_argument("--model", default="n_layer=2,n_embd=256,n_head=4", help="GPT-2 config_overrides")
    p.add_argument("--train_seed", type=int, default=7)
    p.add_argument("--workdir", default=None, help="where runs go (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep every run's output directory")
    p.add_argument("--json", default=None, help="also write the figures and per-run details here")
    return p.parse_args()


# ---- reading a run's output --------------------------------------------------------------------------


def read_log(out: Path) -> List[dict]:
    """log.jsonl's records ([] before the first one); a line cut short by SIGKILL is skipped."""
    from lmtrain.runlog import read_log as read_jsonl

    path = out / "log.jsonl"
    return read_jsonl(path)[0] if path.exists() else []


def loss_curve(records: List[dict]) -> Dict[int, float]:
    """The last loss logged for each step: a resumed run logs again the steps its killed run lost."""
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def saves_in_progress(out: Path, pid: int) -> List[str]:
    return (
        [
            p.name
            for p in out.iterdir()
            if p.name.endswith(f"-{pid}") and (p.name.startswith(".checkpoint-") or ".old-" in p.name)
        ]
        if out.is_dir()
        else []
    )


def check_checkpoint(path: Optional[str]) -> Optional[str]:
    """None when everything resuming reads is there and loads; else what is wrong."""
    if path is None:
        return "no complete checkpoint"
    import torch
    from safetensors.torch import load_file

    p = Path(path)
    need = [
        "COMPLETE",
        "config.json",
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
        "training_args.json",
    ]
    missing = [n for n in need if not (p / n).is_file()]
    if missing:
        return f"{p.name} lacks {missing}"
    try:
        load_file(str(p / "model.safetensors"))
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            torch.load(p / name, map_location="cpu", weights_only=False)
        step = json.loads((p / "trainer_state.json").read_text())["global_step"]
    except Exception as e:  # noqa: BLE001 - any failure to load is the finding
        return f"{p.name}: {type(e).__name__}: {e}"
    if f"checkpoint-{step}" != p.name:
        return f"{p.name} holds trainer state of step {step}"
    return None


def weights_equal(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    try:
        x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    except Exception:  # noqa: BLE001
        return False
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# ---- the runs ----------------------------------------------------------------------------------------


class Bench:
    def __init__(self, a: argparse.Namespace, work: Path) -> None:
        self.a, self.work = a, work
        self.env = dict(
            os.environ,
            PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            OMP_NUM_THREADS=str(a.threads),
            MKL_NUM_THREADS=str(a.threads),
            TOKENIZERS_PARALLELISM="false",
            TRANSFORMERS_VERBOSITY="error",
            HF_HUB_OFFLINE="1",
        )
        self.lock = threading.Lock()

    def prepare(self) -> None:
        from lmtrain.data.bpe import train_bpe_tokenizer

        tok = train_bpe_tokenizer(sorted(SAMPLE.glob("*.txt")), vocab_size=2048)
        tok.save_pretrained(str(self.work / "tokenizer"))
        # ~3.8k tokens: 59 blocks of 64, 15 batches of 4, 8 optimizer steps an epoch (the 8th a tail step)
        text = (SAMPLE / "sonnets.txt").read_text(encoding="utf-8")[:12000]
        (self.work / "train.txt").write_text(text, encoding="utf-8")

    def argv(self, out: Path) -> List[str]:
        a = self.a
        return [
            sys.executable,
            "-m",
            "lmtrain",
            "train",
            "--train_file",
            str(self.work / "train.txt"),
            "--tokenizer_name",
            str(self.work / "tokenizer"),
            "--cache_dir",
            str(self.work / "cache"),
            "--output_dir",
            str(out),
            "--config_overrides",
            a.model,
            "--block_size",
            "64",
            "--per_device_train_batch_size",
            "4",
            "--gradient_accumulation_steps",
            "2",
            "--max_steps",
            str(a.max_steps),
            "--logging_steps",
            "1",
            "--save_strategy",
            "steps",
            "--save_steps",
            str(a.save_steps),
            "--save_total_limit",
            "2",
            "--validation_split_percentage",
            "0",
            "--eval_strategy",
            "no",
            "--dataloader_num_workers",
            str(a.workers),
            "--seed",
            str(a.train_seed),
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
        ]

    def start(self, argv: List[str], log: Path):
        with open(log, "ab") as f:
            t0 = time.time()
            proc = subprocess.Popen(
                argv, env=self.env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.work
            )
        return proc, t0

    def reference(self) -> None:
        out = self.work / "reference"
        proc, _ = self.start(self.argv(out), self.work / "reference.out")
        if proc.wait() != 0:
            sys.exit(f"the reference run failed:\n{(self.work / 'reference.out').read_text()[-3000:]}")
        records = read_log(out)
        self.ref_out, self.ref_curve = out, loss_curve(records)
        steps = [r for r in records if "loss" in r]
        self.span = steps[-1]["time"] - steps[0]["time"]  # first to last logged step
        if sorted(self.ref_curve) != list(range(1, self.a.max_steps + 1)):
            sys.exit(f"the reference logged steps {sorted(self.ref_curve)}")

    def lineage(self, i: int) -> dict:
        rng = random.Random(self.a.seed * 100_003 + i)
        out = self.work / f"run-{i:02d}"
        log = self.work / f"run-{i:02d}.out"
        argv = self.argv(out)
        r: dict = {"run": i}
        proc, t0 = self.start(argv, log)
        while proc.poll() is None and not any((c / "COMPLETE").is_file() for c in out.glob("checkpoint-*")):
            time.sleep(0.005)
        # a random moment after the first checkpoint, or the first save that starts after such a moment
        aim_at_save = rng.random() < self.a.save_bias
        delay = rng.uniform(0.0, (0.5 if aim_at_save else 0.8) * self.span)
        r["kill_after_s"], r["aimed_at_save"] = round(delay, 3), aim_at_save
        end = time.monotonic() + delay
        while proc.poll() is None and time.monotonic() < end:
            time.sleep(0.002)
        if aim_at_save:
            while proc.poll() is None and not saves_in_progress(out, proc.pid):
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.06))
        r["inside_save"] = False
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            r["inside_save"] = bool(saves_in_progress(out, proc.pid))  # read before anything cleans up
        proc.wait()
        r["killed"] = proc.returncode == -signal.SIGKILL
        records = read_log(out)
        r["fresh_first_step_s"] = round(records[0]["time"] - t0, 3) if records else None
        r["killed_after_step"] = max((x["step"] for x in records if "loss" in x), default=0)

        from lmtrain.training.checkpoint import latest_checkpoint

        latest = latest_checkpoint(str(out))
        r["latest"] = Path(latest).name if latest else None
        r["checkpoint_problem"] = check_checkpoint(latest)

        before = len(records)
        proc, t1 = self.start(argv + ["--resume"], log)
        try:
            code = proc.wait(timeout=900)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        records = read_log(out)
        r["resume_exit"] = code
        new_steps = [x for x in records[before:] if "loss" in x]
        r["resume_first_step_s"] = round(new_steps[0]["time"] - t1, 3) if new_steps and r["killed"] else None
        text = log.read_text(errors="replace")
        r["resumed_from_latest"] = bool(latest) and f"resuming from {latest}" in text
        curve = loss_curve(records)
        r["curve_exact"] = curve == self.ref_curve
        if not r["curve_exact"]:
            diff = [s for s in sorted(set(curve) | set(self.ref_curve)) if curve.get(s) != self.ref_curve.get(s)]
            r["curve_differs_at"] = diff
        r["weights_equal"] = code == 0 and weights_equal(out, self.ref_out)
        r["usable"] = r["checkpoint_problem"] is None and code == 0 and r["resumed_from_latest"] and r["curve_exact"]
        if not self.a.keep:
            shutil.rmtree(out, ignore_errors=True)
        with self.lock:
            how = (
                "not killed (it finished first)"
                if not r["killed"]
                else f"killed {'inside a save' if r['inside_save'] else 'between saves'}"
            )
            print(
                f"  run {i:2d}: {how} "
                f"after step {r['killed_after_step']:2d} (latest {r['latest']}); resume exit {code}; "
                f"curve {'exact' if r['curve_exact'] else 'DIFFERS at ' + str(r.get('curve_differs_at'))}; "
                f"first step {r['fresh_first_step_s']}s fresh, {r['resume_first_step_s']}s resumed"
                + (f"; {r['checkpoint_problem']}" if r["checkpoint_problem"] else ""),
                flush=True,
            )
        return r


def median(xs: List[Optional[float]]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main() -> int:
    a = parse_args()
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="lmtrain-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(a, work)
    started = time.perf_counter()
    bench.prepare()
    bench.reference()
    print(
        f"reference: {a.max_steps} steps, a checkpoint every {a.save_steps}, {bench.span:.1f}s from the first "
        f"to the last step; {a.runs} lineages, {a.jobs} at a time, in {work}",
        flush=True,
    )
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        results = list(pool.map(bench.lineage, range(1, a.runs + 1)))

    n = len(results)
    killed = sum(r["killed"] for r in results)
    unusable = sum(not r["usable"] for r in results)
    exact = sum(r["curve_exact"] for r in results)
    fresh = median([r["fresh_first_step_s"] for r in results])
    resumed = median([r["resume_first_step_s"] for r in results])
    ratio = resumed / fresh if fresh and resumed else None
    figures = {
        "runs": n,
        "killed_by_sigkill": killed,
        "killed_inside_a_save": sum(r["inside_save"] for r in results),
        "broken_checkpoints": sum(r["checkpoint_problem"] is not None for r in results),
        "unusable_checkpoints": unusable,
        "exact_loss_curves": exact,
        "final_weights_equal": sum(r["weights_equal"] for r in results),
        "first_step_fresh_median_s": fresh,
        "first_step_resume_median_s": resumed,
        "resume_over_fresh": round(ratio, 3) if ratio else None,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print()
    print("| figure | value | target |")
    print("|---|---|---|")
    print(f"| lineages killed with SIGKILL (at a random moment) | {killed} of {n} | {n} |")
    print(f"| ... of them inside a save | {figures['killed_inside_a_save']} | many |")
    print(f"| ... latest checkpoint missing a file or not loadable | {figures['broken_checkpoints']} | 0 |")
    print(f"| unusable latest checkpoints (broken, not resumed, or curve differs) | {unusable} | 0 |")
    print(f"| resumed runs with the reference loss curve, bit for bit | {exact} of {n} | {n} of {n} |")
    weights = figures["final_weights_equal"]
    print(f"| resumed runs with the reference final weights, bit for bit | {weights} of {n} | {n} of {n} |")
    print(f"| start -> first step, fresh start (median) | {fresh:.2f} s | |" if fresh else "| fresh | n/a | |")
    print(f"| start -> first step, resume (median) | {resumed:.2f} s | |" if resumed else "| resume | n/a | |")
    print(f"| resume / fresh | {ratio:.2f}x | <= 1.2x |" if ratio else "| resume / fresh | n/a | <= 1.2x |")
    print(
        f"\n{a.runs} lineages in {figures['wall_s']:.0f}s; {a.model}, {a.max_steps} steps, save every "
        f"{a.save_steps}, {a.jobs} at a time, OMP_NUM_THREADS={a.threads}"
    )
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"figures": figures, "args": vars(a), "runs": results}, f, indent=2)
    if not a.keep and not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if unusable == 0 and exact == n and killed == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
