"""`torchrun --nproc_per_node 2 -m lmtrain prepare`: two ranks tokenize shards of one cache, equal to one process's."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from lmtrain import cli
from tests.cli.test_prepare import statistics
from tests.data.test_shards import make_corpus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_build_the_cache_one_process_builds(model_dir, tmp_path, subprocess_env, capsys):
    corpus = make_corpus(tmp_path / "data", seed=7, scale=3)  # a.txt and b.jsonl large enough to be cut
    valid = tmp_path / "valid.jsonl"
    valid.write_text("".join(json.dumps({"text": f"held out {i} text"}) + "\n" for i in range(40)), encoding="utf-8")
    args = ["prepare", "--tokenizer_name", str(model_dir), "--block_size", "16", "--validation_file", str(valid)]
    args += ["--train_file", *map(str, corpus)]

    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    env = dict(subprocess_env, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [*torchrun, "-m", "lmtrain", *args, "--cache_dir", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("documents:") == 1  # rank 0 alone reports
    two = statistics(proc.stdout)

    assert cli.main([*args, "--cache_dir", str(tmp_path / "one")]) == 0
    one = statistics(capsys.readouterr().out)
    assert {k: v for k, v in two.items() if k not in ("cache", "time")} == {
        k: v for k, v in one.items() if k not in ("cache", "time")
    }
    dirs_one, dirs_two = [Path(p) for p in one["cache"].split(", ")], [Path(p) for p in two["cache"].split(", ")]
    assert [p.name for p in dirs_one] == [p.name for p in dirs_two] and len(dirs_two) == 2  # train, validation
    for a, b in zip(dirs_one, dirs_two):
        assert (a / "tokens.bin").read_bytes() == (b / "tokens.bin").read_bytes()
        assert (a / "doc_offsets.npy").read_bytes() == (b / "doc_offsets.npy").read_bytes()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in dirs_two)  # no leftovers
