"""Drop-in compatibility: transformers' run_clm.py / run_mlm.py with only the import line changed.

`scripts/run_clm.py` and `scripts/run_mlm.py` are copies of the official example scripts whose
Trainer-side names come from lmtrain. Each is run as a user runs it (a subprocess, command-line flags
or a single JSON file) on tiny models and tokenizers built here and saved with `save_pretrained`;
nothing is downloaded. The independent runs go in parallel, each with one thread, to stay fast.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
SCRIPTS = Path(__file__).resolve().parent / "scripts"
SAMPLE = SRC / "lmtrain" / "data" / "sample"
BLOCK = 32
TIMEOUT = 300

TRAIN_FLAGS = [
    "--do_train",
    "--do_eval",
    "--per_device_train_batch_size",
    "4",
    "--max_steps",
    "20",
    "--learning_rate",
    "1e-3",
    "--logging_steps",
    "5",
    "--save_steps",
    "10",
    "--eval_strategy",
    "steps",
    "--eval_steps",
    "10",
    "--report_to",
    "none",
    "--overwrite_output_dir",
]


# ---------------------------------------------------------------------------------------------- helpers


def _env(root: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(root / "hf_home"),
        HF_DATASETS_CACHE=str(root / "hf_home" / "datasets"),
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",  # tiny models: threads only fight each other (runs go in parallel)
        MKL_NUM_THREADS="1",
        WANDB_DISABLED="true",
    )
    return env


class Run:
    """One script invocation in a subprocess; its output goes to a log file."""

    def __init__(self, name: str, script: str, args: list, root: Path) -> None:
        self.name, self.root = name, root
        self.log_path = root / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPTS / script), *map(str, args)],
            cwd=root,
            env=_env(root),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.started = time.perf_counter()

    def wait(self) -> "Run":
        try:
            self.returncode = self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.returncode = self.proc.wait()
        self._log.close()
        self.seconds = time.perf_counter() - self.started
        self.output = self.log_path.read_text(errors="replace")
        return self

    def check(self) -> "Run":
        assert self.returncode == 0, f"{self.name} failed (exit {self.returncode}):\n{self.output[-6000:]}"
        return self


def _json(path: Path) -> dict:
    assert path.is_file(), (
        f"{path.name} was not written; {path.parent} holds {sorted(p.name for p in path.parent.iterdir())}"
    )
    return json.loads(path.read_text())


def _lines(text: str, start: int, stop: int) -> str:
    return "".join(text.splitlines(keepends=True)[start:stop])


def _clm_blocks(tokenizer, path: Path):
    """The validation blocks run_clm.py builds: each line tokenized (line breaks kept), all concatenated,
    cut into BLOCK-token blocks, remainder dropped (one `map` batch: the file has fewer than 1000 lines)."""
    import torch

    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(lines) < 1000
    ids = [i for line in lines for i in tokenizer(line)["input_ids"]]
    n = len(ids) // BLOCK * BLOCK
    return torch.tensor(ids[:n]).view(-1, BLOCK)


def _clm_eval(model_dir: Path, valid: Path):
    """(token-weighted next-token loss, next-token accuracy, number of blocks), computed without lmtrain."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    blocks = _clm_blocks(tokenizer, valid)
    with torch.no_grad():
        logits = model(input_ids=blocks).logits[:, :-1]
    targets = blocks[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1)).item()
    accuracy = (logits.argmax(-1) == targets).float().mean().item()
    return loss, accuracy, len(blocks)


def _checkpoints(out: Path) -> list:
    return sorted((p.name for p in out.glob("checkpoint-*")), key=lambda n: int(n.split("-")[1]))


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Text files (a slice of the packaged sonnets) and tiny GPT-2 / BERT model directories."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast, GPT2Config, GPT2LMHeadModel

    from lmtrain.data.bpe import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("hf_scripts")
    text = (SAMPLE / "sonnets.txt").read_text(encoding="utf-8")
    train, valid = root / "train.txt", root / "validation.txt"
    train.write_text(_lines(text, 0, 800), encoding="utf-8")
    valid.write_text(_lines(text, 800, 900), encoding="utf-8")

    # Causal LM: GPT-2 with a byte-level BPE (eos <|endoftext|>) trained on the training text.
    gpt2 = root / "tiny-gpt2"
    tok = train_bpe_tokenizer([train], vocab_size=400)
    assert tok.eos_token == "<|endoftext|>"
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=64,
        vocab_size=len(tok),
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(gpt2)
    tok.save_pretrained(gpt2)

    # Masked LM: BERT with a WordPiece vocabulary trained on the same text ([CLS]/[SEP] on every line).
    bert = root / "tiny-bert"
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train(
        [str(train)],
        vocab_size=400,
        min_frequency=2,
        show_progress=False,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    )
    btok = BertTokenizerFast(vocab=wordpiece.get_vocab(), model_max_length=64)
    assert len(btok) > 100 and btok.mask_token_id is not None and btok.pad_token_id is not None
    torch.manual_seed(0)
    bconfig = BertConfig(
        vocab_size=len(btok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=btok.pad_token_id,
    )
    BertForMaskedLM(bconfig).save_pretrained(bert)
    btok.save_pretrained(bert)
    return {"root": root, "train": train, "valid": valid, "gpt2": gpt2, "bert": bert}


def _resume_run(workspace) -> tuple:
    """Continue the finished 20-step CLM run to 30 steps by re-running the script on (a copy of) its
    output_dir without --overwrite_output_dir: the script's get_last_checkpoint logic picks up checkpoint-20."""
    root = workspace["root"]
    out = root / "clm_resumed"
    shutil.copytree(root / "clm", out)
    flags = [f for f in TRAIN_FLAGS if f != "--overwrite_output_dir"]
    flags[flags.index("--max_steps") + 1] = "30"
    run = Run(
        "clm_resume",
        "run_clm.py",
        [
            "--model_name_or_path",
            workspace["gpt2"],
            "--train_file",
            workspace["train"],
            "--validation_file",
            workspace["valid"],
            "--output_dir",
            out,
            "--block_size",
            BLOCK,
            "--cache_dir",
            root / "cache_clm",
            *flags,
        ],
        root,
    )
    return run, out


@pytest.fixture(scope="module")
def runs(workspace):
    """All script runs: the independent ones start together; the resume starts as soon as its run is done."""
    w, root = workspace, workspace["root"]

    # The untrained MLM baseline goes through the script's single-JSON-file path (parse_json_file), eval only.
    baseline_json = root / "mlm_baseline.json"
    baseline_json.write_text(
        json.dumps(
            {
                "model_name_or_path": str(w["bert"]),
                "validation_file": str(w["valid"]),
                "max_seq_length": BLOCK,
                "do_eval": True,
                "output_dir": str(root / "mlm_baseline"),
                "report_to": "none",
                "cache_dir": str(root / "cache_mlm_baseline"),
            }
        )
    )
    clm = Run(
        "clm",
        "run_clm.py",
        [
            "--model_name_or_path",
            w["gpt2"],
            "--train_file",
            w["train"],
            "--validation_file",
            w["valid"],
            "--output_dir",
            root / "clm",
            "--block_size",
            BLOCK,
            "--cache_dir",
            root / "cache_clm",
            *TRAIN_FLAGS,
        ],
        root,
    )
    others = [
        Run(
            "mlm",
            "run_mlm.py",
            [
                "--model_name_or_path",
                w["bert"],
                "--train_file",
                w["train"],
                "--validation_file",
                w["valid"],
                "--output_dir",
                root / "mlm",
                "--max_seq_length",
                BLOCK,
                "--cache_dir",
                root / "cache_mlm",
                *TRAIN_FLAGS,
                # the last flag wins: a tiny BERT needs a higher rate to move in 20 steps
                "--learning_rate",
                "5e-3",
            ],
            root,
        ),
        Run("mlm_baseline", "run_mlm.py", [baseline_json], root),
    ]
    done = {"clm": clm.wait()}
    resume, resumed_out = (None, None)
    if clm.returncode == 0:
        resume, resumed_out = _resume_run(w)
    done.update((r.name, r.wait()) for r in others)
    if resume is not None:
        done["clm_resume"] = resume.wait()
        done["clm_resume"].out = resumed_out
    return done


# The untouched model's eval loss, computed in-process, independently of lmtrain.
@pytest.fixture(scope="module")
def clm_baseline(workspace):
    return _clm_eval(workspace["gpt2"], workspace["valid"])


# ---------------------------------------------------------------------------------------------- CLM


def test_clm_script_trains_saves_and_reports_like_transformers(workspace, runs):
    run = runs["clm"].check()
    out = workspace["root"] / "clm"
    assert "Process rank: -1, device: cpu, n_gpu: 0, distributed training: False, 16-bits training: False" in run.output
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "trainer_state.json",
        "all_results.json",
        "train_results.json",
        "eval_results.json",
        "README.md",
    ):
        assert (out / name).is_file(), f"{name} missing from {sorted(p.name for p in out.iterdir())}"
    assert _checkpoints(out) == ["checkpoint-10", "checkpoint-20"]
    for ckpt in _checkpoints(out):
        assert (out / ckpt / "model.safetensors").is_file() and (out / ckpt / "trainer_state.json").is_file()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "GPT2LMHeadModel" and model.config.n_layer == 2
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|endoftext|>"

    results = _json(out / "all_results.json")
    eval_results = _json(out / "eval_results.json")
    train_results = _json(out / "train_results.json")
    for key, value in eval_results.items():
        assert results[key] == value
    assert results["perplexity"] == pytest.approx(math.exp(results["eval_loss"]), rel=1e-9)
    assert 0.0 <= results["eval_accuracy"] <= 1.0
    assert results["eval_samples"] == _clm_eval(out, workspace["valid"])[2]
    assert train_results["train_samples"] > 0 and math.isfinite(train_results["train_loss"])
    assert "train_runtime" in train_results

    state = _json(out / "trainer_state.json")
    assert state["global_step"] == 20 and state["max_steps"] == 20
    history = state["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [5, 10, 15, 20]
    assert [h["step"] for h in history if "eval_loss" in h][:2] == [10, 20]
    assert all("learning_rate" in h for h in history if "loss" in h)


def test_clm_eval_metrics_match_an_independent_computation(workspace, runs):
    """eval_loss is the mean next-token cross-entropy over all validation tokens, and eval_accuracy the
    script's shifted-argmax accuracy, recomputed here with plain transformers on the saved model."""
    runs["clm"].check()
    results = _json(workspace["root"] / "clm" / "eval_results.json")
    loss, accuracy, blocks = _clm_eval(workspace["root"] / "clm", workspace["valid"])
    assert results["eval_samples"] == blocks
    assert results["eval_loss"] == pytest.approx(loss, rel=1e-4)
    assert results["eval_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    history = _json(workspace["root"] / "clm" / "trainer_state.json")["log_history"]
    last_eval = [h for h in history if "eval_loss" in h and h["step"] == 20][0]
    assert last_eval["eval_loss"] == pytest.approx(loss, rel=1e-4)  # the in-training eval at step 20 agrees


def test_clm_training_lowers_the_eval_loss(workspace, runs, clm_baseline):
    untrained_loss, _accuracy, _blocks = clm_baseline
    assert math.log(400) - 0.3 < untrained_loss < math.log(400) + 0.3  # untrained: about uniform
    trained = _json(workspace["root"] / "clm" / "eval_results.json")
    assert trained["eval_loss"] < untrained_loss - 0.1


def test_clm_script_resumes_from_its_last_checkpoint(workspace, runs):
    assert "clm_resume" in runs, "the first CLM run failed, so the resume run was not started"
    run = runs["clm_resume"].check()
    out = run.out
    assert f"Checkpoint detected, resuming training at {out / 'checkpoint-20'}" in run.output
    assert _checkpoints(out) == ["checkpoint-10", "checkpoint-20", "checkpoint-30"]
    state = _json(out / "trainer_state.json")
    assert state["global_step"] == 30
    losses = {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}
    assert sorted(losses) == [5, 10, 15, 20, 25, 30]  # the first run's history kept, nothing repeated
    first = _json(workspace["root"] / "clm" / "trainer_state.json")
    assert {s: loss for s, loss in losses.items() if s <= 20} == {
        h["step"]: h["loss"] for h in first["log_history"] if "loss" in h
    }
    # It continued from the trained weights: no jump back to the untrained loss.
    assert losses[25] < losses[5]
    first_eval = _json(workspace["root"] / "clm" / "eval_results.json")["eval_loss"]
    assert _json(out / "eval_results.json")["eval_loss"] < first_eval + 0.05

    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


def test_clm_resumed_state_has_the_new_runs_max_steps(runs):
    """Like transformers, a resumed run's state carries its own plan (max_steps), not the checkpoint's."""
    state = _json(runs["clm_resume"].check().out / "trainer_state.json")
    assert state["max_steps"] == 30


# ---------------------------------------------------------------------------------------------- MLM


def test_mlm_script_trains_saves_and_reports_like_transformers(workspace, runs):
    run = runs["mlm"].check()
    out = workspace["root"] / "mlm"
    assert "16-bits training: False" in run.output
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "trainer_state.json",
        "all_results.json",
        "eval_results.json",
    ):
        assert (out / name).is_file(), f"{name} missing from {sorted(p.name for p in out.iterdir())}"
    assert _checkpoints(out) == ["checkpoint-10", "checkpoint-20"]

    from transformers import AutoModelForMaskedLM, AutoTokenizer

    assert type(AutoModelForMaskedLM.from_pretrained(out)).__name__ == "BertForMaskedLM"
    assert AutoTokenizer.from_pretrained(out).mask_token == "[MASK]"

    results = _json(out / "all_results.json")
    assert results["perplexity"] == pytest.approx(math.exp(results["eval_loss"]), rel=1e-9)
    assert 0.0 <= results["eval_accuracy"] <= 1.0
    assert results["eval_samples"] > 0 and results["train_samples"] > 0
    state = _json(out / "trainer_state.json")
    assert state["global_step"] == 20
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [5, 10, 15, 20]


def test_mlm_training_lowers_the_eval_loss(workspace, runs):
    runs["mlm"].check()
    runs["mlm_baseline"].check()
    trained = _json(workspace["root"] / "mlm" / "eval_results.json")
    baseline = _json(workspace["root"] / "mlm_baseline" / "eval_results.json")
    assert trained["eval_samples"] == baseline["eval_samples"]
    # The eval-only (JSON-configured) run evaluates and trains nothing.
    assert not (workspace["root"] / "mlm_baseline" / "train_results.json").exists()
    assert not _checkpoints(workspace["root"] / "mlm_baseline")
    assert 0.0 <= baseline["eval_accuracy"] <= 1.0
    assert trained["eval_loss"] < baseline["eval_loss"] - 0.1
