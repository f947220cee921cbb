"""Streamed training runs for bench/prep.py: `lmtrain train --streaming` on a big corpus, cold, warm and resumed.

Three questions, on one .txt corpus of --streaming_mb MB (and the same text as one .jsonl.zst of
documents of 100 lines, as bench/_formats.py cuts them):

1. time to first step of a streamed run from a cold start: a fresh process and a fresh --cache_dir;
2. training tokens/s of that run against the same command on a complete token cache (``lmtrain
   prepare`` built it; ``train --streaming`` then says so and reads the cache);
3. time to first step of a streamed run resumed from a checkpoint far into the stream, against the
   fresh start. The checkpoint is a real one (step 2 of a streamed run) whose saved position is then
   moved to --streaming_resume_at of each reader's first pass (mid-shard, at a piece boundary, with
   nothing carried), so the resumed run must seek there; its final checkpoint shows it read on from there.

Every run is ``python -m lmtrain train`` in a fresh process, with compare_hf.py's model (GPT-2, 4 layers
of width 256), block 128, batch 16, --logging_steps 1, --tokenizer_name (the BPE prep.py trained: no
tokenizer training is timed). Time to first step: ``time.time()`` just before the process starts to the
``time`` field of its first step record in log.jsonl; the columns before it are when the parent read the
``data:`` line (imports, tokenizer, model, shard plan) and the trainer's banner from the run's output.
Tokens/s: over the step records from --streaming_skip to the last; over the same steps, tokens per
CPU-second of the run's process tree and the data-loader workers' share of that CPU (read from /proc as
each step record appears). A corpus's variants run back to back, in a rotated order in each repeat; the
table shows medians, and each ratio is the median of the ratios within a repeat (a busy moment slows both
sides of a pair alike), with the best run against the best run beside it.

    python bench/_streaming.py far CKPT_DIR TRAIN_FILE TOKENIZER FRACTION   # internal: move a saved position
    python bench/_streaming.py where CKPT_DIR                               # internal: print a saved position
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "n_layer=4,n_embd=256,n_head=4"  # compare_hf.py's GPT-2
BATCH = 16
SEED = 7  # --seed of every run: the lanes' shard order follows it
MB = 10**6
CACHE_NOTE = "token cache of these files is complete"


def add_streaming_args(p) -> None:
    """prep.py's options for this table."""
    p.add_argument("--skip_streaming", action="store_true", help="skip the streaming table")
    p.add_argument("--streaming_mb", type=float, default=500, help="corpus size of the streaming table")
    p.add_argument("--streaming_formats", default="txt,jsonl.zst", help="corpora of the streaming table")
    p.add_argument("--streaming_workers", type=int, default=2, help="dataloader workers of the streamed runs")
    p.add_argument(
        "--streaming_alt_workers",
        default="1",
        help="also time cold streams of the first corpus with these (comma list)",
    )
    p.add_argument("--streaming_steps", type=int, default=30, help="steps of each streamed/cached run")
    p.add_argument("--streaming_skip", type=int, default=5, help="tokens/s counts from this step on")
    p.add_argument("--streaming_repeats", type=int, default=3)
    p.add_argument("--streaming_resume_at", type=float, default=0.9, help="fraction of the first pass to resume at")
    p.add_argument("--streaming_resume_steps", type=int, default=3, help="steps after the resume")


# --------------------------------------------------------------------------------------------
# the children that look into checkpoints (they import lmtrain; the parent does not)


def _load_position(ckpt: str):
    import torch

    return torch.load(os.path.join(ckpt, "data_position_0.pt"), weights_only=False)


def far(ckpt: str, train_file: str, tokenizer_dir: str, fraction: float) -> dict:
    """Move every lane of a saved stream position to ``fraction`` of its first pass; returns where."""
    import torch
    from transformers import AutoTokenizer

    from lmtrain.data.lanes import LaneReader
    from lmtrain.data.readers.text import compression_of, open_bytes
    from lmtrain.data.shards import find_boundary
    from lmtrain.data.streaming import StreamingDataset

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ds = StreamingDataset([train_file], tok, 128, seed=SEED, write_cache=False)
    pos = _load_position(ckpt)
    lanes = pos["world_size"] * max(1, pos["workers"])
    out = {}
    for lane, st in pos["lanes"].items():
        src = st["sources"][0]
        order = LaneReader(ds, 0, st["global_lane"], lanes, src)._order(0)
        sizes = [ds.shards[0][i].size for i, _, _ in order]
        target, k = fraction * sum(sizes), 0
        while k < len(order) - 1 and sum(sizes[: k + 1]) <= target:
            k += 1
        shard = ds.shards[0][order[k][0]]
        into = (target - sum(sizes[:k])) / shard.size  # fraction of this shard
        if shard.kind == "bytes" and train_file.endswith(".txt"):
            at = shard.start + int(into * shard.size)
            with open(shard.path, "rb") as f:
                f.seek(at - 4)
                buf = f.read(1 << 16)
            b = find_boundary(buf, 4, len(buf) - 5, at - 4)
            if b < 0:
                raise SystemExit(f"no piece boundary near byte {at} of {shard.path}")
            cursor: object = at - 4 + b
            skipped = sum(sizes[:k]) + (at - 4 + b - shard.start)
        elif shard.kind == "file" and compression_of(shard.path) and ".jsonl" in shard.path.name:
            with open_bytes(shard.path, compression_of(shard.path)) as f:  # decompressed size, then the line
                total = sum(iter(lambda: len(f.read(1 << 20)), 0))
            at = int(into * total)
            with open_bytes(shard.path, compression_of(shard.path)) as f:
                left = at
                while left > 0:
                    left -= len(f.read(min(1 << 20, left)))
                rest = f.read(1 << 20)
            cursor = [at + rest.index(b"\n") + 1, 0]  # before the record on the next line
            skipped = int(fraction * total)
        else:
            raise SystemExit(f"far: no rule for a shard of kind {shard.kind} ({shard.path})")
        src.update({"pass": 0, "shard": k, "cursor": cursor, "unit": 0, "carry": src["carry"][:0]})
        out[str(lane)] = {"shard": k, "cursor": cursor, "bytes_before": skipped, "stride": order[k][1]}
    torch.save(pos, os.path.join(ckpt, "data_position_0.pt"))
    return out


def where(ckpt: str) -> dict:
    pos = _load_position(ckpt)
    return {
        str(lane): {"pass": s["pass"], "shard": s["shard"], "cursor": s["cursor"]}
        for lane, st in pos["lanes"].items()
        for s in st["sources"][:1]
    }


def _child(*argv: str) -> dict:
    env = dict(os.environ, PYTHONPATH=_pythonpath(), TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *argv], env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise SystemExit(f"_streaming.py {argv[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# running lmtrain


def _pythonpath() -> str:
    return os.pathsep.join(filter(None, [os.path.join(REPO, "src"), os.environ.get("PYTHONPATH")]))


def _env() -> dict:
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        PYTHONPATH=_pythonpath(),
    )


def train_argv(a, file: str, tok: str, cache: str, out: str, workers: int, steps: int, save: int = 0) -> list:
    argv = [sys.executable, "-m", "lmtrain", "train", "--streaming", "--train_file", file]
    argv += ["--tokenizer_name", tok, "--cache_dir", cache, "--output_dir", out, "--config_overrides", MODEL]
    argv += ["--block_size", str(a.block_size), "--per_device_train_batch_size", str(BATCH)]
    argv += ["--max_steps", str(steps), "--logging_steps", "1", "--dataloader_num_workers", str(workers)]
    argv += ["--validation_split_percentage", "0", "--eval_strategy", "no", "--seed", str(SEED)]
    argv += ["--report_to", "none", "--disable_tqdm", "true"]
    argv += ["--save_strategy", "steps", "--save_steps", str(save)] if save else ["--save_strategy", "no"]
    return argv


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # every waited-for descendant: the data-loader workers too
    return r.ru_utime + r.ru_stime


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _tree_cpu(pid: int) -> dict | None:
    """CPU seconds so far of ``pid`` and of each live descendant (the data-loader workers), by pid; Linux only."""
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[p] = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError, IndexError):
            if p == pid:
                return None  # the run has ended; a worker that just ended does not spoil the sample
    return out


def run(a, argv: list, out: str, tokens_per_step: int) -> dict:
    """One run in a fresh process: time to its first step (and to two lines of its output), tokens/s, CPU.

    While it runs, the parent polls log.jsonl; at each new step record it reads the CPU time of the run's
    process tree, so tokens per CPU-second is measured over the same steps as tokens/s. That figure barely
    moves when other jobs take the cores, where tokens/s does.
    """
    cpu0, t0 = _cpu_children(), time.time()
    proc = subprocess.Popen(
        argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    )
    marks: dict = {}
    tail: list = []

    def read_output() -> None:
        nonlocal tail
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.time() - t0
            if line.startswith("data:"):
                marks.setdefault("data_s", now)
            elif line.startswith("lmtrain: "):
                marks.setdefault("start_s", now)
            elif CACHE_NOTE in line:
                marks["read_cache"] = True
            tail = (tail + [line])[-40:]

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    log, seen, steps, cpu_at = os.path.join(out, "log.jsonl"), 0, {}, {}
    while True:
        done = proc.poll() is not None
        if os.path.exists(log):
            with open(log) as f:
                f.seek(seen)
                chunk = f.read()
            cut = chunk.rfind("\n") + 1
            seen += len(chunk[:cut].encode())
            for line in chunk[:cut].splitlines():
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if "loss" in r and r["time"] >= t0 - 0.5:  # this process's step records (a resumed run appends)
                    steps[r["step"]] = r["time"]
                    if not done:
                        cpu_at[r["step"]] = _tree_cpu(proc.pid)
        if done:
            break
        if time.time() - t0 > a.timeout:
            proc.kill()  # the run we started, by its handle
        time.sleep(0.05)
    reader.join()
    if proc.returncode != 0:
        raise SystemExit(f"lmtrain train failed (exit {proc.returncode}): {' '.join(argv)}\n{''.join(tail)}")
    first, last = min(steps), max(steps)
    res = {**marks, "first_step": first, "first_step_s": steps[first] - t0, "cpu_s": _cpu_children() - cpu0}
    skip = max(a.streaming_skip, first)
    if last > skip:
        res["tok_s"] = (last - skip) * tokens_per_step / (steps[last] - steps[skip])
        sampled = [k for k, v in cpu_at.items() if v is not None and k > skip]  # the last record may come too late
        if cpu_at.get(skip) is not None and sampled:
            end = max(sampled)
            t0_cpu, t1_cpu = cpu_at[skip], cpu_at[end]
            main = t1_cpu[proc.pid] - t0_cpu[proc.pid]
            workers = sum(c - t0_cpu.get(p, 0.0) for p, c in t1_cpu.items() if p != proc.pid)
            res["tok_per_cpu_s"] = (end - skip) * tokens_per_step / max(main + workers, 1e-9)
            res["worker_cpu_share"] = workers / max(main + workers, 1e-9)
    return res


def write_jsonl_zst(txt: str, dest: str) -> dict:
    """The .txt's text as documents of 100 lines (bench/_formats.py's cut) in one .jsonl.zst."""
    import zstandard
    from _formats import LINES_PER_DOC

    n = docs = 0
    with open(txt, encoding="utf-8") as f, open(dest, "wb") as raw:
        with zstandard.ZstdCompressor(level=3).stream_writer(raw, closefd=False) as w:
            lines: list = []
            for line in f:
                lines.append(line)
                if len(lines) == LINES_PER_DOC:
                    data = (json.dumps({"text": "".join(lines)}, ensure_ascii=False) + "\n").encode()
                    w.write(data)
                    n, docs, lines = n + len(data), docs + 1, []
            if lines:
                data = (json.dumps({"text": "".join(lines)}, ensure_ascii=False) + "\n").encode()
                w.write(data)
                n, docs = n + len(data), docs + 1
    return {"documents": docs, "jsonl_bytes": n, "bytes": os.path.getsize(dest)}


def prepare_cache(file: str, tok: str, cache: str, block_size: int) -> float:
    """``lmtrain prepare`` of ``file`` into ``cache`` (the warm cache the cached runs read); its wall time."""
    argv = [sys.executable, "-m", "lmtrain", "prepare", "--train_file", file, "--tokenizer_name", tok]
    argv += ["--cache_dir", cache, "--block_size", str(block_size), "--validation_split_percentage", "0"]
    t = time.perf_counter()
    proc = subprocess.run(argv, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"lmtrain prepare failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.perf_counter() - t


# --------------------------------------------------------------------------------------------
# the table


def measure_streaming(a, txt: str, tok: str, tmp: str) -> tuple[dict, list]:
    """Runs every variant of every corpus, interleaved; returns (results, the table's lines)."""
    tokens_per_step = BATCH * a.block_size
    w0 = a.streaming_workers
    alt = [int(w) for w in a.streaming_alt_workers.split(",") if w.strip() and int(w) != w0]
    base = os.path.join(tmp, "streaming")
    os.makedirs(base, exist_ok=True)
    corpora: dict = {}
    for fmt in [f.strip() for f in a.streaming_formats.split(",") if f.strip()]:
        if fmt == "txt":
            corpora[fmt] = {"file": txt, "bytes": os.path.getsize(txt)}
        elif fmt == "jsonl.zst":
            dest = os.path.join(base, "corpus.jsonl.zst")
            corpora[fmt] = {"file": dest, **write_jsonl_zst(txt, dest)}
        else:
            raise SystemExit(f"--streaming_formats: {fmt} is not one of txt, jsonl.zst")
    for fmt, c in corpora.items():
        c["warm_cache"] = os.path.join(base, f"warm-{fmt}")
        c["prepare_s"] = prepare_cache(c["file"], tok, c["warm_cache"], a.block_size)
        print(f"  {fmt}: {c['bytes'] / MB:.0f} MB on disk, lmtrain prepare {c['prepare_s']:.1f}s", file=sys.stderr)
        # a real streamed checkpoint at step 2, its position moved far into the stream
        ck = os.path.join(base, f"ckpt-{fmt}")
        shutil.rmtree(ck, ignore_errors=True)
        run(a, train_argv(a, c["file"], tok, os.path.join(base, f"ck-cache-{fmt}"), ck, w0, 2, save=2), ck, 1)
        c["resume_position"] = _child(
            "far", os.path.join(ck, "checkpoint-2"), c["file"], tok, str(a.streaming_resume_at)
        )
        c["ckpt"] = ck

    def variants(fmt: str, c: dict) -> list:
        def cold(w: int):
            return lambda out, cache: run(
                a, train_argv(a, c["file"], tok, cache, out, w, a.streaming_steps), out, tokens_per_step
            )

        def warm(out, cache):
            r = run(a, train_argv(a, c["file"], tok, c["warm_cache"], out, w0, a.streaming_steps), out, tokens_per_step)
            if not r.get("read_cache"):
                raise SystemExit(f"the cached run of {fmt} did not say it reads the token cache")
            return r

        def resumed(out, cache):
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(c["ckpt"], out)
            total = 2 + a.streaming_resume_steps
            argv = train_argv(a, c["file"], tok, cache, out, w0, total, save=total) + ["--resume"]
            r = run(a, argv, out, tokens_per_step)
            after, before = _child("where", os.path.join(out, f"checkpoint-{total}")), c["resume_position"]
            r["continued"] = all(  # each lane read on from the moved position, in the same shard
                after[k]["pass"] == 0
                and after[k]["shard"] == v["shard"]
                and _offset(after[k]["cursor"]) >= _offset(v["cursor"])
                for k, v in before.items()
            )
            return r

        return [
            ("stream", cold(w0)),
            *[(f"stream_w{w}", cold(w)) for w in (alt if fmt == first else [])],
            ("cache", warm),
            ("resume", resumed),
        ]

    first = next(iter(corpora))
    groups = [[(fmt, name, fn) for name, fn in variants(fmt, c)] for fmt, c in corpora.items()]
    runs: dict = {(fmt, name): [] for g in groups for fmt, name, _ in g}
    for r in range(a.streaming_repeats):
        # a corpus's variants run back to back, so each pair compared is minutes apart at most; the order
        # rotates in each repeat, so no variant always runs first or after the same one
        todo = [v for g in groups for v in g[r % len(g) :] + g[: r % len(g)]]
        for fmt, name, fn in todo:
            out, cache = os.path.join(base, f"out-{fmt}-{name}"), os.path.join(base, f"cache-{fmt}-{name}")
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
            got = fn(out, cache)
            runs[(fmt, name)].append(got)
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
            print(
                f"  {fmt:9s} {name:10s} run {r + 1}/{a.streaming_repeats}: first step {got['first_step_s']:.2f}s"
                + (f", {got['tok_s']:.0f} tok/s" if "tok_s" in got else "")
                + f", cpu {got['cpu_s']:.1f}s",
                file=sys.stderr,
                flush=True,
            )
    return _table(a, corpora, runs, w0, alt)


def _offset(cursor) -> int:
    return int(cursor[0]) if isinstance(cursor, list) else int(cursor)


def _med(rs: list, key: str):
    xs = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def _best(rs: list, key: str) -> float:
    return max(r[key] for r in rs)


def _ratio(num: list, den: list, key: str):
    """The median of the per-repeat ratios num/den."""
    xs = [n[key] / d[key] for n, d in zip(num, den) if n.get(key) and d.get(key)]
    return statistics.median(xs) if xs else None


def _table(a, corpora: dict, runs: dict, w0: int, alt: list) -> tuple[dict, list]:
    def f(x, fmt="{:.2f}"):
        return "n/a" if x is None else fmt.format(x)

    span = f"steps {a.streaming_skip}-{a.streaming_steps}"
    lines = [
        f"### Streaming: `lmtrain train --streaming` on {a.streaming_mb:g} MB of text, {os.cpu_count()} CPUs; "
        f"GPT-2 4x256, block {a.block_size}, batch {BATCH}, {a.streaming_steps} steps; median of "
        f"{a.streaming_repeats}, ratios the median of the per-repeat ratios",
        "",
        "| corpus | run | data line (s) | train start (s) | first step (s) | vs cold stream | "
        f"tok/s ({span}) | vs cache | tok per CPU-s | vs cache | workers' share of the CPU |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "stream": f"streamed, cold (fresh cache dir, fresh process), {w0} worker(s)",
        **{f"stream_w{w}": f"streamed, cold, {w} worker(s)" for w in alt},
        "cache": f"token cache complete (read instead), {w0} worker(s)",
        "resume": f"streamed, resumed at {a.streaming_resume_at:.0%} of pass 0, {w0} worker(s)",
    }
    results: dict = {"runs": {f"{k[0]}/{k[1]}": v for k, v in runs.items()}, "corpora": corpora, "ratios": {}}
    notes = []
    for fmt, c in corpora.items():
        cold, cache = runs[(fmt, "stream")], runs[(fmt, "cache")]
        for name, label in labels.items():
            rs = runs.get((fmt, name))
            if not rs:
                continue
            lines.append(
                f"| {fmt}, {c['bytes'] / MB:.0f} MB | {label} | {f(_med(rs, 'data_s'))} | {f(_med(rs, 'start_s'))} "
                f"| {f(_med(rs, 'first_step_s'))} | {f(_ratio(rs, cold, 'first_step_s'))} "
                f"| {f(_med(rs, 'tok_s'), '{:,.0f}')} | {f(_ratio(rs, cache, 'tok_s'))} "
                f"| {f(_med(rs, 'tok_per_cpu_s'), '{:,.0f}')} | {f(_ratio(rs, cache, 'tok_per_cpu_s'))} "
                f"| {f(_med(rs, 'worker_cpu_share'), '{:.1%}')} |"
            )
        ratios = {
            "cold_first_step_s": _med(cold, "first_step_s"),
            "stream_minus_cache_first_step_s": statistics.median(
                s["first_step_s"] - w["first_step_s"] for s, w in zip(cold, cache)
            ),
            "stream_vs_cache_tok_s": _ratio(cold, cache, "tok_s"),
            "stream_vs_cache_best_tok_s": _best(cold, "tok_s") / _best(cache, "tok_s"),
            "stream_vs_cache_tok_per_cpu_s": _ratio(cold, cache, "tok_per_cpu_s"),
            "resume_vs_fresh_first_step": _ratio(runs[(fmt, "resume")], cold, "first_step_s"),
            "resume_continued": all(r.get("continued") for r in runs[(fmt, "resume")]),
        }
        for w in alt:
            if (fmt, f"stream_w{w}") in runs:
                ratios[f"w{w}_vs_w{w0}_tok_s"] = _ratio(runs[(fmt, f"stream_w{w}")], cold, "tok_s")
                ratios[f"w{w}_vs_w{w0}_first_step"] = _ratio(runs[(fmt, f"stream_w{w}")], cold, "first_step_s")
        results["ratios"][fmt] = ratios
        pos = c["resume_position"]
        own = sum(p["bytes_before"] for p in pos.values() if p.get("stride", 1) == 1)  # disjoint shares
        skipped = own + max([p["bytes_before"] for p in pos.values() if p.get("stride", 1) > 1], default=0)
        workers = "".join(
            f"; {w} worker(s) / {w0}: tok/s {f(ratios[f'w{w}_vs_w{w0}_tok_s'])}, "
            f"first step {f(ratios[f'w{w}_vs_w{w0}_first_step'])}"
            for w in alt
            if f"w{w}_vs_w{w0}_tok_s" in ratios
        )
        notes.append(
            f"- {fmt}: cold first step {f(ratios['cold_first_step_s'])} s (target < 10 s); cold stream minus "
            f"cached run {f(ratios['stream_minus_cache_first_step_s'], '{:+.2f}')} s; tok/s streamed / cached "
            f"**{f(ratios['stream_vs_cache_tok_s'])}** (target >= 0.95; best run against best run "
            f"{f(ratios['stream_vs_cache_best_tok_s'])}), per CPU-s "
            f"{f(ratios['stream_vs_cache_tok_per_cpu_s'])}; first step resumed / fresh "
            f"**{f(ratios['resume_vs_fresh_first_step'])}** (target ~1; its {len(pos)} readers resumed with "
            f"{skipped / MB:,.0f} MB of input behind them and read on from there: "
            f"{'yes' if ratios['resume_continued'] else 'NO'}){workers}; `lmtrain prepare` of it: {c['prepare_s']:.0f} s"
        )
    lines += ["", *notes, ""]
    return results, lines


if __name__ == "__main__":
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "far":
        print(json.dumps(far(rest[0], rest[1], rest[2], float(rest[3]))))
    elif cmd == "where":
        print(json.dumps(where(rest[0])))
    else:
        raise SystemExit(f"unknown command {cmd}")
