#!/usr/bin/env python3
"""Data preparation: lmtrain's token cache against the standard `datasets` recipe.

The recipe (run_clm.py's): ``load_dataset("text", data_files=..., cache_dir=tmp)``,
``.map(tokenize, batched=True, remove_columns=["text"])``, ``.map(group_texts,
batched=True)`` with block_size 128. lmtrain: ``prepare_datasets(files, tokenizer,
128, cache_dir=tmp, validation_split_percentage=5)``, cold (fresh cache dir) and
warm (again, on the cache the cold run left). Both use the same tokenizer: a
byte-level BPE (vocab 8192) trained once by ``train_bpe_tokenizer`` on the corpus,
saved, and loaded by every child with ``AutoTokenizer``.

Every measurement runs in a fresh child process that reports the wall time of the
preparation call alone (interpreter start, imports and tokenizer loading excluded,
for both) and its own peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``: everything
the process ever held, imports included). The parent imports nothing heavy, so it
adds nothing to a child's RSS.

Corpora are built in a temp dir by repeating the shared Shakespeare train.txt into
one .txt file: ``x10`` (the 47 MB comparison) and, for the scaling table, files of
exactly --sizes MB (cut at a line end). The recipe runs in the scaling table only up
to --recipe_max_mb (default 50): at 500 MB it would take many minutes and GBs.

The input-formats table writes the comparison corpus again as documents of 100 lines
(bench/_formats.py): one .jsonl, the same .jsonl compressed as .jsonl.zst, and parquet
shards (--shards files of --row_groups row groups each), and times lmtrain's cold
preparation of each next to the one .txt (the variants interleaved within each repeat).

    python bench/prep.py                              # comparison (3 repeats) + scaling 5,50,500 MB
    python bench/prep.py --sizes 5,50 --repeats 1     # quicker
    python bench/prep.py --skip_scaling --json out.json
    python bench/prep.py --times 1 --repeats 1 --skip_compare --skip_scaling   # input formats only, small
    python bench/prep.py --skip_compare --skip_formats --skip_scaling          # streamed training only (bench/_streaming.py)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_TAG = "@@PREP_RESULT "
MODES = ("recipe", "lmtrain")
MB = 10**6


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    corpus = os.path.normpath(os.path.join(REPO, "..", "shared", "corpus", "shakespeare", "train.txt"))
    p.add_argument("--train_file", default=corpus, help="the text repeated into the corpora")
    p.add_argument("--times", type=int, default=10, help="repetitions for the comparison corpus (default 10)")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement in the comparison (median)")
    p.add_argument("--sizes", default="5,50,500", help="scaling table corpus sizes in MB (comma list)")
    p.add_argument("--scale_repeats", type=int, default=1, help="runs per measurement in the scaling table")
    p.add_argument(
        "--recipe_max_mb", type=float, default=50, help="largest size the recipe runs at in the scaling table"
    )
    p.add_argument("--vocab_size", type=int, default=8192)
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--skip_compare", action="store_true")
    p.add_argument("--skip_scaling", action="store_true")
    p.add_argument("--skip_formats", action="store_true", help="skip the input-formats table")
    p.add_argument("--shards", type=int, default=4, help="parquet shards in the input-formats table")
    p.add_argument("--row_groups", type=int, default=4, help="row groups per parquet shard")
    from _streaming import add_streaming_args  # bench/ is on sys.path when the script runs

    add_streaming_args(p)  # --skip_streaming, --streaming_mb 500, ...
    p.add_argument("--no_fast_bpe", action="store_true", help="lmtrain without the tiktoken fast path")
    p.add_argument("--workdir", default=None, help="keep corpora/tokenizer/caches here (default: a temp dir, removed)")
    p.add_argument("--json", default=None, help="write all runs and medians here")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child")
    p.add_argument("--verbose", action="store_true", help="show the children's output")
    # child mode (internal)
    p.add_argument(
        "--child", choices=MODES + ("train_tokenizer", "write_formats"), default=None, help=argparse.SUPPRESS
    )
    p.add_argument("--file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# children


def _peak_rss() -> int:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb if sys.platform == "darwin" else kb * 1024  # bytes on macOS, KiB on Linux


def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime  # every thread of the process


def _report(**result) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)


def child_train_tokenizer(args) -> None:
    sys.path.insert(0, os.path.join(REPO, "src"))
    from lmtrain.data.bpe import train_bpe_tokenizer

    t = time.perf_counter()
    tok = train_bpe_tokenizer([args.file], vocab_size=args.vocab_size)
    tok.save_pretrained(args.tokenizer)
    _report(seconds=time.perf_counter() - t)


def child_write_formats(args) -> None:
    from _formats import write_formats  # bench/ is on sys.path when the script runs

    _report(**write_formats(args.file, args.cache, args.shards, args.row_groups))


def child_recipe(args) -> None:
    import datasets
    from datasets import load_dataset
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()  # lmtrain shows none when not on a terminal either
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    block_size = args.block_size

    def tokenize_function(examples):
        return tokenizer(examples["text"])

    from _recipe import make_group_texts  # bench/ is on sys.path when the script runs

    group_texts = make_group_texts(block_size)

    rss0 = _peak_rss()
    cpu = _cpu()
    t = time.perf_counter()
    raw = load_dataset("text", data_files={"train": [args.file]}, cache_dir=args.cache)
    tokenized = raw.map(tokenize_function, batched=True, remove_columns=["text"])
    lm = tokenized.map(group_texts, batched=True)
    seconds = time.perf_counter() - t
    _report(seconds=seconds, cpu=_cpu() - cpu, peak_rss=_peak_rss(), rss_before=rss0, blocks=len(lm["train"]))


def child_lmtrain(args) -> None:
    sys.path.insert(0, os.path.join(REPO, "src"))
    from transformers import AutoTokenizer

    from lmtrain.data.pack import prepare_datasets
    from lmtrain.data.readers import resolve_files

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    rss0 = _peak_rss()
    cpu = _cpu()
    t = time.perf_counter()
    train, evals, info = prepare_datasets(
        resolve_files([args.file]), tokenizer, args.block_size, cache_dir=args.cache, validation_split_percentage=5
    )
    seconds = time.perf_counter() - t
    meta = json.loads(open(os.path.join(info["cache_dirs"][0], "meta.json")).read())
    _report(
        seconds=seconds,
        cpu=_cpu() - cpu,
        peak_rss=_peak_rss(),
        rss_before=rss0,
        blocks=len(train) + (len(evals) if evals is not None else 0),
        tokens=info["corpus_tokens"],
        encoder=meta.get("encoder"),
    )


# --------------------------------------------------------------------------------------------
# parent


def run_child(args, mode, **kw) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        mode,
        "--block_size",
        str(args.block_size),
        "--vocab_size",
        str(args.vocab_size),
    ]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        PYTHONPATH=os.pathsep.join(filter(None, [os.path.join(REPO, "src"), os.environ.get("PYTHONPATH")])),
    )
    if args.no_fast_bpe:
        env["LMTRAIN_NO_FAST_BPE"] = "1"
    proc = subprocess.run(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=args.timeout
    )
    if args.verbose:
        sys.stderr.write(proc.stdout)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    sys.stderr.write(proc.stdout[-4000:])
    raise SystemExit(f"child {mode} failed (exit {proc.returncode})")


def build_corpus(src: str, dest: str, *, times: int | None = None, size_mb: float | None = None) -> int:
    """Write ``src`` repeated ``times`` times, or cut to ``size_mb`` MB at a line end."""
    with open(src, "rb") as f:
        data = f.read()
    if not data.endswith(b"\n"):
        data += b"\n"
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    written = 0
    with open(dest, "wb") as out:
        if times is not None:
            for _ in range(times):
                out.write(data)
            return len(data) * times
        limit = int(size_mb * MB)
        while written < limit:
            part = data[: limit - written]
            if len(part) < len(data):
                part = part[: part.rfind(b"\n") + 1] or part
            out.write(part)
            written += len(part)
            if len(part) < len(data):
                break
    return written


def measure(args, modes, file, tokenizer, tmp, repeats, warm: dict | None = None) -> dict:
    """Cold (fresh cache dir) and warm (same dir again) runs of each mode, ``repeats`` times.

    The modes are interleaved within each repeat, so a machine that is busier at
    some moment slows both sides alike.
    """
    runs = {m: {"cold": [], "warm": []} for m in modes}
    for r in range(repeats):
        for mode in modes:
            cache = tempfile.mkdtemp(prefix=f"{mode}-cache-", dir=tmp)
            c = run_child(args, mode, file=file, tokenizer=tokenizer, cache=cache)
            runs[mode]["cold"].append(c)
            w = (
                run_child(args, mode, file=file, tokenizer=tokenizer, cache=cache)
                if (warm or {}).get(mode, True)
                else None
            )
            if w:
                runs[mode]["warm"].append(w)
            shutil.rmtree(cache, ignore_errors=True)
            print(
                f"  {mode:8s} run {r + 1}/{repeats}: cold {c['seconds']:.2f}s (cpu {c['cpu']:.1f}s) "
                f"{c['peak_rss'] / 2**20:.0f} MiB"
                + (f", warm {w['seconds']:.3f}s {w['peak_rss'] / 2**20:.0f} MiB" if w else ""),
                file=sys.stderr,
                flush=True,
            )
    out = {}
    for mode in modes:
        out[mode] = {}
        for phase, rs in runs[mode].items():
            if rs:
                out[mode][phase] = {
                    key: statistics.median(r[key] for r in rs) for key in ("seconds", "cpu", "peak_rss", "rss_before")
                }
                out[mode][phase]["runs"] = rs
    return out


def measure_inputs(args, inputs: dict, tokenizer, tmp, repeats) -> dict:
    """Cold lmtrain runs on each of ``inputs`` (name: path), interleaved within each repeat as in ``measure``."""
    runs: dict = {name: [] for name in inputs}
    for r in range(repeats):
        for name, path in inputs.items():
            cache = tempfile.mkdtemp(prefix="inputs-cache-", dir=tmp)
            c = run_child(args, "lmtrain", file=path, tokenizer=tokenizer, cache=cache)
            shutil.rmtree(cache, ignore_errors=True)
            runs[name].append(c)
            print(
                f"  {name:10s} run {r + 1}/{repeats}: cold {c['seconds']:.2f}s (cpu {c['cpu']:.1f}s) "
                f"{c['peak_rss'] / 2**20:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
    keys = ("seconds", "cpu", "peak_rss", "rss_before")
    return {name: {**{k: statistics.median(r[k] for r in rs) for k in keys}, "runs": rs} for name, rs in runs.items()}


def mib(b: float) -> str:
    return f"{b / 2**20:.0f}"


def secs(s: float) -> str:
    return f"{s:.3f}" if s < 1 else f"{s:.2f}" if s < 100 else f"{s:.0f}"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child == "train_tokenizer":
        return child_train_tokenizer(args)
    if args.child == "recipe":
        return child_recipe(args)
    if args.child == "lmtrain":
        return child_lmtrain(args)
    if args.child == "write_formats":
        return child_write_formats(args)

    tmp = args.workdir or tempfile.mkdtemp(prefix="lmtrain-prep-bench-")
    os.makedirs(tmp, exist_ok=True)
    results: dict = {"args": vars(args), "cpus": os.cpu_count()}
    try:
        t0 = time.perf_counter()
        tok_dir = os.path.join(tmp, "tokenizer")
        if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
            r = run_child(args, "train_tokenizer", file=args.train_file, tokenizer=tok_dir)
            print(f"tokenizer: vocab {args.vocab_size} trained in {r['seconds']:.1f}s", file=sys.stderr)
        src_mb = os.path.getsize(args.train_file) / MB
        lines = []
        if not args.skip_compare:
            file = os.path.join(tmp, f"x{args.times}", "train.txt")
            size = build_corpus(args.train_file, file, times=args.times)
            print(f"comparison corpus: {size / MB:.1f} MB ({args.times} x {src_mb:.1f} MB)", file=sys.stderr)
            both = measure(args, ("recipe", "lmtrain"), file, tok_dir, tmp, args.repeats, warm={})
            rec, lmt = both["recipe"], both["lmtrain"]
            results["compare"] = {"bytes": size, "recipe": rec, "lmtrain": lmt}
            rc, rw, lc, lw = rec["cold"], rec["warm"], lmt["cold"], lmt["warm"]
            lines += [
                f"### Preparing {size / MB:.1f} MB ({args.times} x the Shakespeare train.txt), "
                f"{os.cpu_count()} CPUs, block 128, BPE vocab {args.vocab_size}; median of {args.repeats}",
                "",
                "| | time (s) | CPU (s) | peak RSS (MiB) | RSS after imports (MiB) | speed-up vs recipe cold "
                "| peak RSS vs recipe cold |",
                "|---|---:|---:|---:|---:|---:|---:|",
                f"| datasets recipe, cold | {secs(rc['seconds'])} | {secs(rc['cpu'])} | {mib(rc['peak_rss'])} "
                f"| {mib(rc['rss_before'])} | 1x | 1.00 |",
                f"| datasets recipe, warm (its cache) | {secs(rw['seconds'])} | {secs(rw['cpu'])} | {mib(rw['peak_rss'])} "
                f"| {mib(rw['rss_before'])} | {rc['seconds'] / rw['seconds']:.0f}x | {rw['peak_rss'] / rc['peak_rss']:.2f} |",
                f"| lmtrain, cold | {secs(lc['seconds'])} | {secs(lc['cpu'])} | {mib(lc['peak_rss'])} "
                f"| {mib(lc['rss_before'])} | **{rc['seconds'] / lc['seconds']:.1f}x** "
                f"| **{lc['peak_rss'] / rc['peak_rss']:.2f}** |",
                f"| lmtrain, warm (its cache) | {secs(lw['seconds'])} | {secs(lw['cpu'])} | {mib(lw['peak_rss'])} "
                f"| {mib(lw['rss_before'])} | **{rc['seconds'] / lw['seconds']:.0f}x** "
                f"| {lw['peak_rss'] / rc['peak_rss']:.2f} |",
                "",
                f"lmtrain warm vs the recipe's own warm run: {rw['seconds'] / lw['seconds']:.0f}x; "
                f"CPU time, cold: {rc['cpu'] / lc['cpu']:.1f}x less. "
                f"lmtrain encoder: {lc['runs'][0].get('encoder')}; {lc['runs'][0].get('tokens'):,} tokens "
                f"(the recipe drops the newlines: {rc['runs'][0].get('blocks'):,} blocks vs "
                f"{lc['runs'][0].get('blocks'):,}).",
                "",
            ]
        if not args.skip_formats:
            file = os.path.join(tmp, f"x{args.times}", "train.txt")
            size = (
                os.path.getsize(file) if os.path.isfile(file) else build_corpus(args.train_file, file, times=args.times)
            )
            out = os.path.join(tmp, f"x{args.times}-formats")
            w = run_child(args, "write_formats", file=file, cache=out, shards=args.shards, row_groups=args.row_groups)
            inputs = {"txt": file, **w["paths"]}
            got = measure_inputs(args, inputs, tok_dir, tmp, args.repeats)
            results["formats"] = {"bytes": size, "written": w, "lmtrain_cold": got}
            labels = {
                "txt": "one .txt (a single document)",
                "jsonl": ".jsonl",
                "jsonl.zst": ".jsonl.zst",
                "parquet": f"parquet, {args.shards} shards x {args.row_groups} row groups",
            }
            base = got["txt"]
            lines += [
                f"### Input formats: the same {size / MB:.1f} MB as {w['documents']:,} documents of 100 lines; "
                f"lmtrain cold, median of {args.repeats}",
                "",
                "| input | on disk (MB) | cold (s) | CPU (s) | text MB/s | peak RSS (MiB) | time vs .txt | tokens |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for name, m in got.items():
                lines.append(
                    f"| {labels[name]} | {w['sizes'][name] / MB:.1f} | {secs(m['seconds'])} | {secs(m['cpu'])} "
                    f"| {size / MB / m['seconds']:.1f} | {mib(m['peak_rss'])} | {m['seconds'] / base['seconds']:.2f} "
                    f"| {m['runs'][0].get('tokens'):,} |"
                )
            lines.append("")
        if not args.skip_scaling:
            sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
            rows = []
            for mb in sizes:
                file = os.path.join(tmp, f"{mb:g}mb", "train.txt")
                size = build_corpus(args.train_file, file, size_mb=mb)
                print(f"scaling corpus: {size / MB:.1f} MB", file=sys.stderr)
                modes = ("lmtrain", "recipe") if mb <= args.recipe_max_mb else ("lmtrain",)
                got = measure(args, modes, file, tok_dir, tmp, args.scale_repeats, warm={"recipe": False})
                lmt, rec = got["lmtrain"], got.get("recipe")
                os.remove(file)
                rows.append((mb, size, lmt, rec))
                results.setdefault("scaling", []).append({"mb": mb, "bytes": size, "lmtrain": lmt, "recipe": rec})
            lines += [
                f"### Scaling (one .txt file of the given size; median of {args.scale_repeats}; "
                f"recipe only up to {args.recipe_max_mb:g} MB)",
                "",
                "| corpus | lmtrain cold (s) | CPU (s) | MB/s | peak RSS (MiB) | warm (s) | warm peak RSS (MiB) "
                "| recipe cold (s) | recipe peak RSS (MiB) | speed-up |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for _mb, size, lmt, rec in rows:
                c, w = lmt["cold"], lmt["warm"]
                rec_cells = (
                    "| not run | not run | |"
                    if rec is None
                    else f"| {secs(rec['cold']['seconds'])} | {mib(rec['cold']['peak_rss'])} "
                    f"| {rec['cold']['seconds'] / c['seconds']:.1f}x |"
                )
                lines.append(
                    f"| {size / MB:.0f} MB | {secs(c['seconds'])} | {secs(c['cpu'])} | {size / MB / c['seconds']:.1f} "
                    f"| {mib(c['peak_rss'])} "
                    f"| {secs(w['seconds'])} | {mib(w['peak_rss'])} " + rec_cells
                )
            lines.append("")
        if not args.skip_streaming:
            from _streaming import measure_streaming

            file = os.path.join(tmp, "streaming", "train.txt")
            size = build_corpus(args.train_file, file, size_mb=args.streaming_mb)
            print(f"streaming corpus: {size / MB:.1f} MB", file=sys.stderr)
            results["streaming"], more = measure_streaming(args, file, tok_dir, tmp)
            lines += more
        lines.append(f"(bench/prep.py finished in {time.perf_counter() - t0:.0f}s)")
        print("\n".join(lines))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        if args.workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
