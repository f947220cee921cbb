"""`lmtrain` end to end, as a user runs it: the packaged sample corpus, user files, and bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = [
    "--config_overrides",
    "n_layer=2,n_embd=32,n_head=2",
    "--vocab_size",
    "512",
    "--block_size",
    "64",
    "--per_device_train_batch_size",
    "8",
    "--learning_rate",
    "1e-2",
    "--logging_first_step",
    "--logging_steps",
    "10",
    "--report_to",
    "none",
]


def lmtrain(args, env, cwd=None, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "lmtrain", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"lmtrain {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One from-scratch run on the packaged sample corpus (no --train_file)."""
    from tests.conftest import SRC

    env = dict(os.environ, PYTHONPATH=str(SRC), TRANSFORMERS_VERBOSITY="error")
    root = tmp_path_factory.mktemp("cli")
    out = root / "run"
    proc = lmtrain(
        [
            "train",
            "--output_dir",
            str(out),
            "--cache_dir",
            str(root / "cache"),
            "--max_steps",
            "60",
            "--eval_strategy",
            "steps",
            "--eval_steps",
            "30",
            "--save_steps",
            "30",
            *TINY,
        ],
        env,
    )
    return out, proc, env, root


def test_sample_corpus_run_learns_and_saves_a_loadable_model(trained_run):
    out, proc, _env, _root = trained_run
    assert "sample corpus shipped with lmtrain" in proc.stdout
    assert "effective batch 8" in proc.stdout
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    first_loss = next(r["loss"] for r in records if "loss" in r)
    metrics = json.loads((out / "eval_results.json").read_text())
    # clearly learned something: the loss of a uniform guess over 512 tokens is ln(512) = 6.24
    assert metrics["eval_loss"] < first_loss - 0.75 and metrics["eval_perplexity"] < math.exp(first_loss) / 2
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-9)
    assert metrics["eval_bits_per_byte"] > 0
    for name in ("model.safetensors", "config.json", "tokenizer.json", "trainer_state.json", "all_results.json"):
        assert (out / name).exists(), name
    assert (out / "checkpoint-60" / "COMPLETE").exists()


def test_reloaded_model_gives_the_same_eval_loss(trained_run):
    out, _proc, _env, root = trained_run
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmtrain import Trainer, TrainingArguments, default_data_collator
    from lmtrain.data.pack import prepare_datasets
    from lmtrain.data.readers import sample_corpus_files

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    _, eval_ds, _ = prepare_datasets(sample_corpus_files(), tokenizer, 64, cache_dir=root / "cache", seed=42)
    args = TrainingArguments(
        output_dir=str(root / "re"), per_device_eval_batch_size=16, report_to="none", disable_tqdm=True
    )
    metrics = Trainer(model=model, args=args, eval_dataset=eval_ds, data_collator=default_data_collator).evaluate()
    saved = json.loads((out / "eval_results.json").read_text())
    assert metrics["eval_loss"] == pytest.approx(saved["eval_loss"], rel=1e-5)


def test_eval_and_generate_commands(trained_run, tmp_path):
    out, _proc, env, _root = trained_run
    text = tmp_path / "held_out.txt"
    text.write_text((Path(__file__).parents[2] / "src/lmtrain/data/sample/sonnets.txt").read_text()[:20000])
    proc = lmtrain(
        ["eval", "--model", str(out), "--file", str(text), "--block_size", "64", "--cache_dir", str(tmp_path / "c")],
        env,
    )
    metrics = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    gen = lmtrain(["generate", "--model", str(out), "--prompt", "Shall I compare thee", "--max_new_tokens", "12"], env)
    assert gen.stdout.startswith("Shall I compare thee") and len(gen.stdout.split()) > 4


def test_resume_continues_from_the_latest_checkpoint(trained_run):
    out, _proc, env, root = trained_run
    proc = lmtrain(
        [
            "train",
            "--output_dir",
            str(out),
            "--cache_dir",
            str(root / "cache"),
            "--max_steps",
            "70",
            "--resume",
            "--save_steps",
            "30",
            *TINY,
        ],
        env,
    )
    assert "resuming from" in proc.stdout and "checkpoint-60" in proc.stdout
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 70


def test_user_files_jsonl_mlm_and_yaml_config(tmp_path, subprocess_env):
    sample = (Path(__file__).parents[2] / "src/lmtrain/data/sample/midsummer_nights_dream.txt").read_text()
    paragraphs = [p for p in sample.split("\n\n") if p.strip()]
    with open(tmp_path / "train.jsonl", "w") as f:
        for p in paragraphs:
            f.write(json.dumps({"body": p}) + "\n")
    (tmp_path / "run.yaml").write_text(
        "text_column: body\nmlm: true\nmax_steps: 12\nmodel_type: bert\n"
        "config_overrides: num_hidden_layers=2,hidden_size=32,num_attention_heads=2,intermediate_size=64\n"
    )
    out = tmp_path / "mlm"
    lmtrain(
        [
            "train",
            "--config",
            str(tmp_path / "run.yaml"),
            "--train_file",
            str(tmp_path / "train.jsonl"),
            "--output_dir",
            str(out),
            "--cache_dir",
            str(tmp_path / "cache"),
            "--vocab_size",
            "512",
            "--block_size",
            "32",
            "--report_to",
            "none",
        ],
        subprocess_env,
    )
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(out)
    assert model.config.model_type == "bert"
    assert "eval_loss" in json.loads((out / "eval_results.json").read_text())


@pytest.mark.parametrize(
    "make_input, extra, message",
    [
        (lambda d: str(d / "missing.txt"), [], "no such file or directory"),
        (lambda d: (d / "empty.txt").write_text("") and str(d / "empty.txt") or str(d / "empty.txt"), [], "is empty"),
        (
            lambda d: (d / "bad.txt").write_bytes(b"fine text \xff\xfe broken") and str(d / "bad.txt"),
            [],
            "not valid UTF-8",
        ),
        (lambda d: (d / "tiny.txt").write_text("too short") and str(d / "tiny.txt"), [], "smaller --block_size"),
        (
            lambda d: (d / "ok.txt").write_text("word " * 500) and str(d / "ok.txt"),
            ["--config_overrides", "n_layer=1,n_embd=16,n_head=2,n_positions=32", "--block_size", "64"],
            "positions",
        ),
    ],
)
def test_bad_input_gives_one_line_and_leaves_nothing(tmp_path, subprocess_env, make_input, extra, message):
    path = make_input(tmp_path)
    out = tmp_path / "never"
    args = [
        "train",
        "--train_file",
        path,
        "--output_dir",
        str(out),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--vocab_size",
        "300",
        "--block_size",
        "64",
        "--max_steps",
        "1",
        *extra,
    ]
    proc = lmtrain(args, subprocess_env, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_help_lists_commands_and_field_docs(subprocess_env):
    assert "generate" in lmtrain(["--help"], subprocess_env).stdout
    out = lmtrain(["train", "--help"], subprocess_env).stdout
    assert "--gradient_accumulation_steps" in out and "Micro-batches summed into one optimizer step" in out


# ---- what a newcomer meets ---------------------------------------------------------------------------


def test_sample_corpus_run_ends_with_a_sample_and_the_next_command(trained_run):
    out, proc, _env, _root = trained_run
    lines = proc.stdout.strip().splitlines()
    assert lines[-3].startswith(f"saved the model and tokenizer to {out}")
    assert lines[-2].startswith("sample at step 60: 'Shall I compare thee") and len(lines[-2]) > 60
    assert lines[-1] == (
        f"next: lmtrain generate --model {out} --prompt 'Shall I compare thee', "
        f"or lmtrain report {out} (plots and an HTML page)"
    )


def test_output_dir_under_a_file_is_one_line(tmp_path, subprocess_env):
    (tmp_path / "notes.txt").write_text("keep me")
    proc = lmtrain(
        [
            "train",
            "--output_dir",
            str(tmp_path / "notes.txt" / "run"),
            "--cache_dir",
            str(tmp_path / "c"),
            "--max_steps",
            "1",
        ],
        subprocess_env,
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --output_dir ") and str(tmp_path / "notes.txt") in lines[0]
    assert "is a file, not a folder" in lines[0] and "pass an --output_dir" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing half-written, not even a cache
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_a_missing_model_is_named_as_the_model(tmp_path, subprocess_env):
    proc = lmtrain(
        ["train", "--model_name_or_path", "does/not/exist", "--output_dir", str(tmp_path / "run")],
        subprocess_env,
        check=False,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: model 'does/not/exist' is not a local directory") and "offline" in lines[0]
    assert not (tmp_path / "run").exists()


def test_the_readme_install_gives_what_the_tour_uses():
    """`pip install -e .` (the README's first command) installs matplotlib, which `lmtrain report` needs."""
    import re

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert {"matplotlib", "torch", "transformers", "pyyaml"} <= names
    assert any(d.startswith("matplotlib") for d in project["optional-dependencies"]["report"])  # old extra still works
    readme = (root / "README.md").read_text()
    first = re.findall(r"^python3 -m pip install .*$", readme, flags=re.M)[0]
    assert re.search(r"-e \.(\s|$)", first) and "lmtrain train" in first  # the default install, no extra needed
