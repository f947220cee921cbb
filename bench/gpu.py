"""GPU benchmark: GPT-2 124M (12 layers, 768 wide, block 1024) in bf16, every variant in one invocation.

Variants (--variants, comma-separated, each `TRAINER[+chunkN][+ro][+nogc][@bB]`):
  transformers              transformers.Trainer with its best flags (bf16, torch.compile, fused AdamW, SDPA)
  lmtrain                   lmtrain today, the same flags
  lmtrain+chunk4096         lmtrain with loss_chunk_size=4096 (head + cross-entropy 4096 tokens at a time)
  lmtrain+chunk4096@b64     the same at per-device batch 64 (the memory the logits no longer take)
  ...+ro                    torch_compile_mode="reduce-overhead": CUDA graphs over the compiled model
  ...+nogc                  Python's GC frozen and disabled for the run (measures that lever before it is built)

All get the same model config, the same packed blocks of the shared Shakespeare corpus (or a synthetic one
when it is missing) and persistent loader workers; each variant runs in its own subprocess. A run is one
compile warm-up (--warmup steps, not timed) then --repeats timed windows of --steps steps; tokens/s is the
median window. --runs N starts each variant N times, interleaved (about 1 min of compile each on a GPU).
Printed: one table of tokens/s, MFU against the GPU's dense bf16 peak, peak memory (whole run) and the
ratio to transformers.Trainer; with --json the raw results, rewritten after every run.

    python bench/gpu.py                       # GPU: 5 variants, ~6 min on an H100/H200 (mostly compiling)
    python bench/gpu.py --variants lmtrain+chunk4096+ro,lmtrain+chunk4096+nogc   # any others
    python bench/gpu.py --device cpu --small  # CPU: a 4-layer model, block 256, no compile; ~2 min

The data preparation is not compared here (bench/prep.py does that): every variant reads lmtrain's blocks.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = [
    ROOT / ".bench_data" / "train.txt",
    ROOT / "shared" / "corpus" / "shakespeare" / "train.txt",
    ROOT.parent / "shared" / "corpus" / "shakespeare" / "train.txt",
]
GPU_VARIANTS = "transformers,lmtrain,lmtrain+chunk4096,lmtrain+chunk4096@b32,lmtrain+chunk4096@b64"
CPU_VARIANTS = "transformers,lmtrain,lmtrain+chunk512,lmtrain+chunk512@b16"


def parse_variant(spec: str, batch: int) -> Dict:
    """'lmtrain+chunk4096+ro@b32' -> trainer lmtrain, loss_chunk_size 4096, reduce-overhead, batch 32."""
    rest, _, b = spec.partition("@b")
    trainer, *mods = rest.split("+")
    chunk = next((int(m[5:]) for m in mods if m.startswith("chunk") and m[5:].isdigit()), 0)
    unknown = [m for m in mods if m not in ("ro", "nogc") and not (m.startswith("chunk") and m[5:].isdigit())]
    if trainer not in ("lmtrain", "transformers") or unknown or (chunk and trainer != "lmtrain"):
        raise SystemExit(
            f"bad variant {spec!r}: TRAINER[+chunkN][+ro][+nogc][@bB] with TRAINER lmtrain or "
            f"transformers (+chunkN: lmtrain's loss_chunk_size)"
        )
    return {
        "name": spec,
        "trainer": trainer,
        "chunk": chunk,
        "batch": int(b or batch),
        "reduce_overhead": "ro" in mods,
        "no_gc": "nogc" in mods,
    }


def model_config(small: bool, vocab: int):
    from transformers import GPT2Config

    if small:
        return GPT2Config(
            n_layer=4,
            n_embd=256,
            n_head=4,
            n_positions=256,
            vocab_size=vocab,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    return GPT2Config(
        n_layer=12,
        n_embd=768,
        n_head=12,
        n_positions=1024,
        vocab_size=vocab,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def child(opts: argparse.Namespace) -> None:
    """One trainer run; prints one JSON line."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    sys.path.insert(0, str(ROOT / "src"))
    from lmtrain.data.pack import prepare_datasets
    from lmtrain.training.flops import flops_per_token, peak_flops

    variant = parse_variant(opts.run, opts.batch)
    tok = AutoTokenizer.from_pretrained(opts.tokenizer)
    block = 256 if opts.small else 1024
    train_ds, _, _ = prepare_datasets(
        [opts.corpus], tok, block, validation_split_percentage=0, cache_dir=opts.cache_dir
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(model_config(opts.small, 50304 if not opts.small else len(tok)))
    model.config._attn_implementation = "sdpa"
    device = torch.device(opts.device)
    bf16 = device.type == "cuda" or opts.bf16
    marks = [opts.warmup + i * opts.steps for i in range(opts.repeats + 1)]
    times: List[float] = []

    def on_step(step: int) -> None:
        if step in marks:
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    common = dict(
        output_dir=opts.out,
        max_steps=marks[-1],
        per_device_train_batch_size=variant["batch"],
        learning_rate=6e-4,
        weight_decay=0.1,
        max_grad_norm=1.0,
        warmup_steps=10,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_drop_last=True,
        bf16=bf16,
        torch_compile=opts.compile,
        use_cpu=device.type == "cpu",
        seed=0,
        dataloader_num_workers=2,
        dataloader_persistent_workers=True,  # no worker restart at each (short) epoch
        optim="adamw_torch_fused" if device.type == "cuda" else "adamw_torch",
        **({"torch_compile_mode": "reduce-overhead"} if variant["reduce_overhead"] else {}),
    )
    if variant["trainer"] == "lmtrain":
        from lmtrain import Trainer, TrainerCallback, TrainingArguments, default_data_collator

        args = TrainingArguments(**common, loss_chunk_size=variant["chunk"])
    else:
        from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

        args = TrainingArguments(**common)

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            on_step(state.global_step)

    trainer = Trainer(
        model=model, args=args, train_dataset=train_ds, data_collator=default_data_collator, callbacks=[Timer()]
    )
    if variant["no_gc"]:  # what "GC out of the step" can gain at most: no collection during the run at all
        gc.collect()
        gc.freeze()
        gc.disable()
    trainer.train()
    fused = None
    if variant["chunk"]:  # say whether the chunked loss really ran (else the model kept its full logits)
        from lmtrain.training.linear_ce import fusion_status

        fused = fusion_status(model)
    tokens = opts.steps * variant["batch"] * block
    windows = [tokens / (b - a) for a, b in zip(times, times[1:])]
    # MFU on CUDA only: the CPU's peak is a per-process matmul estimate, too noisy on a shared machine
    peak = peak_flops(device, torch.bfloat16) if device.type == "cuda" else None
    per_token = flops_per_token(model, block)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    tps = statistics.median(windows)
    mfu = tps * per_token / peak if peak else None
    print(
        json.dumps(
            {
                **variant,
                "tokens_per_s": tps,
                "windows": windows,
                "mfu": mfu,
                "fused": fused,
                "peak_mem_gib": mem,
                "compile": opts.compile,
                "bf16": bf16,
                "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            }
        ),
        flush=True,
    )


def synthetic_corpus(path: Path, mib: int = 5) -> Path:
    """A stand-in corpus (Zipf-like words) where the shared one is missing: the timing needs no real text."""
    rng = random.Random(0)
    words = ["".join(rng.choice("etaoinshrdlucmfwypvbgk") for _ in range(rng.randint(1, 9))) for _ in range(5000)]
    weights = [1 / (i + 1) for i in range(len(words))]
    with path.open("w") as f:
        while f.tell() < mib * 2**20:
            f.write(" ".join(rng.choices(words, weights, k=2000)) + ".\n")
    return path


def run_variant(opts: argparse.Namespace, spec: str, r: int, work: Path, env: dict) -> Optional[dict]:
    cmd = (
        [
            sys.executable,
            __file__,
            "--run",
            spec,
            "--tokenizer",
            str(work / "tok"),
            "--cache_dir",
            str(work / "cache"),
            "--out",
            str(work / f"out-{r}"),
            "--corpus",
            opts.corpus,
            "--device",
            opts.device,
            "--steps",
            str(opts.steps),
            "--warmup",
            str(opts.warmup),
            "--repeats",
            str(opts.repeats),
            "--batch",
            str(opts.batch),
            "--compile" if opts.compile else "--no-compile",
        ]
        + (["--small"] if opts.small else [])
        + (["--bf16"] if opts.bf16 else [])
    )
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((x for x in proc.stdout.splitlines()[::-1] if x.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        print(f"{spec} run {r} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}", file=sys.stderr)
        return None
    result = dict(json.loads(line), wall_s=time.perf_counter() - start)
    print(f"run {r} {spec}: {result}", file=sys.stderr, flush=True)
    return result


def print_table(opts: argparse.Namespace, results: Dict[str, List[dict]]) -> None:
    def med(name: str, key: str):
        values = [x[key] for x in results.get(name, []) if x.get(key) is not None]
        return statistics.median(values) if values else None

    done = [x for runs in results.values() for x in runs]
    dev = done[0]["device"] if done else opts.device
    model = "GPT-2 4x256, block 256" if opts.small else "GPT-2 124M, block 1024"
    print(
        f"\n{model}, bf16={opts.device == 'cuda' or opts.bf16}, compile={opts.compile}, {dev}; per run "
        f"{opts.warmup} warm-up steps, then the median of {opts.repeats} windows of {opts.steps} steps; "
        f"medians of {opts.runs} run(s)\n"
    )
    print("| variant | batch | tokens/s | MFU | peak memory GiB | vs transformers.Trainer |\n|---|---|---|---|---|---|")
    ref = med("transformers", "tokens_per_s")
    for name, runs in results.items():
        if not runs:
            print(f"| {name} | - | failed | - | - | - |")
            continue
        tps, mfu, mem = med(name, "tokens_per_s"), med(name, "mfu"), med(name, "peak_mem_gib")
        if any(r.get("fused") not in (None, "fused") for r in runs):
            name += f" (NOT fused: {runs[0]['fused']})"
        print(
            f"| {name} | {runs[0]['batch']} | {tps:,.0f} | {'-' if mfu is None else f'{mfu:.1%}'} | "
            f"{'-' if mem is None else f'{mem:.1f}'} | {f'{tps / ref:.2f}x' if ref else '-'} |"
        )
    best = max(
        (n for n in results if n != "transformers" and results[n]), key=lambda n: med(n, "tokens_per_s"), default=None
    )
    if best and ref:
        print(
            f"\nbest lmtrain variant {best}: {med(best, 'tokens_per_s'):,.0f} tokens/s = "
            f"{med(best, 'tokens_per_s') / ref:.2f}x transformers.Trainer (targets: >= 470k tokens/s, >= 1.3x)"
        )


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true", help="a 4-layer 256-wide model with block 256 (CPU variant)")
    p.add_argument("--variants", default=None, help=f"default GPU: {GPU_VARIANTS}; CPU: {CPU_VARIANTS}")
    p.add_argument("--steps", type=int, default=None, help="steps per timed window (default 20 GPU, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="steps before timing: compile, warm-up (10 GPU, 2 CPU)")
    p.add_argument("--repeats", type=int, default=2, help="timed windows per run; the median is reported")
    p.add_argument("--runs", type=int, default=1, help="subprocesses per variant, interleaved (each compiles)")
    p.add_argument("--batch", type=int, default=None, help="per-device batch without @bN (default 16 GPU, 8 CPU)")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile (default: on for CUDA, off on the CPU, where it takes minutes)",
    )
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU too")
    p.add_argument("--corpus", default=next((str(c) for c in DEFAULT_CORPUS if c.exists()), None))
    p.add_argument("--json", default=None, help="write the raw results here (after every run)")
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    p.add_argument("--cache_dir", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    opts = p.parse_args()
    cpu = opts.device == "cpu"
    opts.steps = opts.steps or (3 if cpu else 20)
    opts.warmup = opts.warmup or (2 if cpu else 10)
    opts.batch = opts.batch or (8 if cpu else 16)
    opts.compile = (not cpu) if opts.compile is None else opts.compile
    if opts.run:
        child(opts)
        return
    specs = [
        parse_variant(v, opts.batch)["name"]
        for v in (opts.variants or (CPU_VARIANTS if cpu else GPU_VARIANTS)).split(",")
    ]
    sys.path.insert(0, str(ROOT / "src"))
    from lmtrain.data.bpe import train_bpe_tokenizer

    work = Path(tempfile.mkdtemp(prefix="lmtrain-gpu-bench-"))
    if not opts.corpus:
        opts.corpus = str(synthetic_corpus(work / "synthetic.txt"))
        print(f"no shared corpus: using a synthetic one ({opts.corpus})", file=sys.stderr)
    tok = train_bpe_tokenizer([Path(opts.corpus)], vocab_size=8192)
    tok.save_pretrained(work / "tok")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    results: Dict[str, List[dict]] = {s: [] for s in specs}
    for r in range(opts.runs):
        for spec in specs if r % 2 == 0 else specs[::-1]:
            result = run_variant(opts, spec, r, work, env)
            if result is not None:
                results[spec].append(result)
            if opts.json:
                Path(opts.json).write_text(json.dumps(results, indent=2))
    print_table(opts, results)


if __name__ == "__main__":
    main()
