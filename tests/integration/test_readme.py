"""Every `lmtrain` command in README.md's tour runs, with a tiny model and few steps.

The commands are taken from the README itself, so the README cannot drift from what works. Each
train command gets size flags appended (argparse keeps the last value of a repeated flag); paths
under runs/ are redirected into the test's temporary folder.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.integration.test_cli import lmtrain

ROOT = Path(__file__).resolve().parents[2]
SMALL = {
    "gpt2": "n_layer=1,n_embd=32,n_head=2",
    "llama": "num_hidden_layers=1,hidden_size=32,intermediate_size=64,num_attention_heads=2,num_key_value_heads=2",
    "bert": "num_hidden_layers=1,hidden_size=32,intermediate_size=64,num_attention_heads=2",
}


def tour_commands() -> list:
    text = (ROOT / "README.md").read_text()
    tour = text[text.index("## Five-minute tour") :]
    block = tour[tour.index("```bash") + 7 : tour.index("```", tour.index("```bash") + 7)]
    return [line for line in block.splitlines() if line.startswith("lmtrain ")]


def shrink(args: list, tmp: Path) -> list:
    args = [a.replace("runs/", f"{tmp}/runs/") if a.startswith("runs/") else a for a in args]
    if args[0] != "train":
        return (
            args
            + (["--cache_dir", str(tmp / "cache")] if args[0] in ("eval", "prepare") else [])
            + (["--max_new_tokens", "5"] if args[0] == "generate" else [])
        )
    steps = int(args[args.index("--max_steps") + 1]) // 100  # 300 -> 3, 400 (resume) -> 4
    extra = [
        "--max_steps",
        str(steps),
        "--block_size",
        "32",
        "--cache_dir",
        str(tmp / "cache"),
        "--eval_steps",
        "1",
        "--save_steps",
        "3",
        "--report_to",
        "none",
        "--per_device_train_batch_size",
        "4",
    ]
    if "--model_name_or_path" not in args:
        kind = "llama" if "llama" in args else ("bert" if "--mlm" in args else "gpt2")
        extra += ["--vocab_size", "300"]
        if "--config_overrides" in args:
            args[args.index("--config_overrides") + 1] = SMALL[kind]
        else:
            extra += ["--config_overrides", SMALL[kind]]
    return args + extra


def test_readme_tour_commands_run(tmp_path, subprocess_env):
    commands = tour_commands()
    assert len(commands) >= 10
    for line in commands:
        args = shrink(shlex.split(line)[1:], tmp_path)
        proc = lmtrain(args, subprocess_env, cwd=ROOT)
        assert proc.returncode == 0, line
    assert (tmp_path / "runs" / "compare" / "report.html").exists()
    assert (tmp_path / "runs" / "lora" / "merged" / "config.json").exists()


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first = re.findall(r"^python3 -m pip install .*$", text, flags=re.M)[:2]
    assert "lmtrain train" in first[0] and "pytest" in first[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert first[1] in ci  # CI runs exactly the README's test command
