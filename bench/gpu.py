"""GPU benchmark: GPT-2 124M (12 layers, 768 wide, block 1024) in bf16, lmtrain vs transformers.Trainer.

Both trainers get the same model config, the same packed blocks of the shared Shakespeare corpus, the
same batch and their best settings (bf16, torch.compile, fused AdamW, SDPA attention); each runs in its
own subprocess, in one invocation, repeated and interleaved. Printed: steady-state tokens/s (steps after
--warmup), MFU against the GPU's dense bf16 peak, peak memory, and the ratio lmtrain / transformers.

    python bench/gpu.py                       # on a GPU machine
    python bench/gpu.py --device cpu --small  # the CPU variant (a 4-layer model), where no GPU is at hand

The data preparation is not compared here (bench/prep.py does that): both read lmtrain's blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = [ROOT / ".bench_data" / "train.txt", ROOT.parent / "shared" / "corpus" / "shakespeare" / "train.txt"]


def model_config(small: bool, vocab: int):
    from transformers import GPT2Config

    if small:
        return GPT2Config(n_layer=4, n_embd=256, n_head=4, n_positions=256, vocab_size=vocab,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=vocab,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def child(opts: argparse.Namespace) -> None:
    """One trainer run; prints one JSON line."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    sys.path.insert(0, str(ROOT / "src"))
    from lmtrain.data.pack import prepare_datasets
    from lmtrain.training.flops import flops_per_token, peak_flops

    tok = AutoTokenizer.from_pretrained(opts.tokenizer)
    block = 256 if opts.small else 1024
    train_ds, _, _ = prepare_datasets([opts.corpus], tok, block, validation_split_percentage=0,
                                      cache_dir=opts.cache_dir)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(model_config(opts.small, 50304 if not opts.small else len(tok)))
    model.config._attn_implementation = "sdpa"
    device = torch.device(opts.device)
    bf16 = device.type == "cuda" or opts.bf16
    times: list = []

    def on_step(step: int) -> None:
        if step in (opts.warmup, opts.steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    common = dict(output_dir=opts.out, max_steps=opts.steps, per_device_train_batch_size=opts.batch,
                  learning_rate=6e-4, weight_decay=0.1, max_grad_norm=1.0, warmup_steps=10, logging_steps=10_000,
                  save_strategy="no", report_to="none", disable_tqdm=True, dataloader_drop_last=True, bf16=bf16,
                  torch_compile=opts.compile, use_cpu=device.type == "cpu", seed=0, dataloader_num_workers=2)
    if opts.run == "lmtrain":
        from lmtrain import Trainer, TrainerCallback, TrainingArguments, default_data_collator

        args = TrainingArguments(**common, optim="adamw_torch_fused" if device.type == "cuda" else "adamw_torch")
    else:
        from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

        args = TrainingArguments(**common, optim="adamw_torch_fused" if device.type == "cuda" else "adamw_torch")

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            on_step(state.global_step)

    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=default_data_collator,
                      callbacks=[Timer()])
    trainer.train()
    steps = opts.steps - opts.warmup
    tokens_per_s = steps * opts.batch * block / (times[1] - times[0])
    peak = peak_flops(device, torch.bfloat16 if bf16 else None)
    mfu = tokens_per_s * flops_per_token(model, block) / peak if peak else None
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    print(json.dumps({"run": opts.run, "tokens_per_s": tokens_per_s, "mfu": mfu, "peak_mem_gib": mem,
                      "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}), flush=True)


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true", help="a 4-layer 256-wide model with block 256 (CPU variant)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 60 GPU, 12 CPU)")
    p.add_argument("--warmup", type=int, default=None, help="steps excluded from timing (compile, warm-up)")
    p.add_argument("--batch", type=int, default=None, help="per-device batch (default 16 GPU, 8 CPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU too")
    p.add_argument("--corpus", default=next((str(c) for c in DEFAULT_CORPUS if c.exists()), None))
    p.add_argument("--json", default=None, help="write the raw results here")
    p.add_argument("--run", choices=["lmtrain", "transformers"], help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    p.add_argument("--cache_dir", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    opts = p.parse_args()
    cpu = opts.device == "cpu"
    opts.steps = opts.steps or (12 if cpu else 60)
    opts.warmup = opts.warmup or (4 if cpu else 15)
    opts.batch = opts.batch or (8 if cpu else 16)
    if opts.run:
        child(opts)
        return
    if not opts.corpus:
        sys.exit("no corpus: pass --corpus FILE")
    sys.path.insert(0, str(ROOT / "src"))
    from lmtrain.data.tokenize import train_bpe_tokenizer

    work = Path(tempfile.mkdtemp(prefix="lmtrain-gpu-bench-"))
    tok = train_bpe_tokenizer([Path(opts.corpus)], vocab_size=8192)
    tok.save_pretrained(work / "tok")
    results: dict = {"lmtrain": [], "transformers": []}
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    for r in range(opts.repeats):
        for name in ("transformers", "lmtrain") if r % 2 else ("lmtrain", "transformers"):
            cmd = [sys.executable, __file__, "--run", name, "--tokenizer", str(work / "tok"), "--cache_dir",
                   str(work / "cache"), "--out", str(work / f"out-{name}-{r}"), "--corpus", opts.corpus,
                   "--device", opts.device, "--steps", str(opts.steps), "--warmup", str(opts.warmup),
                   "--batch", str(opts.batch)] + (["--small"] if opts.small else []) \
                + ([] if opts.compile else ["--no-compile"]) + (["--bf16"] if opts.bf16 else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((x for x in proc.stdout.splitlines()[::-1] if x.startswith("{")), None)
            if proc.returncode != 0 or line is None:
                print(f"{name} run {r} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}", file=sys.stderr)
                continue
            results[name].append(json.loads(line))
            print(f"run {r} {name}: {results[name][-1]}", file=sys.stderr, flush=True)

    def med(name: str, key: str):
        values = [x[key] for x in results[name] if x.get(key) is not None]
        return statistics.median(values) if values else None

    dev = (results["lmtrain"] or results["transformers"] or [{}])[0].get("device", opts.device)
    model = "GPT-2 4x256, block 256" if opts.small else "GPT-2 124M, block 1024"
    print(f"\n{model}, batch {opts.batch}, bf16={opts.device == 'cuda' or opts.bf16}, compile={opts.compile}, "
          f"{dev}; medians of {opts.repeats} runs, steps {opts.warmup + 1}-{opts.steps} timed\n")
    print("| trainer | tokens/s | MFU | peak memory GiB |\n|---|---|---|---|")
    for name in ("lmtrain", "transformers"):
        tps, mfu, mem = med(name, "tokens_per_s"), med(name, "mfu"), med(name, "peak_mem_gib")
        print(f"| {name} | {tps:,.0f} | {mfu:.1%} | {mem:.1f} |" if mem is not None and mfu is not None
              else f"| {name} | {tps or 0:,.0f} | {mfu if mfu is None else f'{mfu:.1%}'} | - |")
    a, b = med("lmtrain", "tokens_per_s"), med("transformers", "tokens_per_s")
    if a and b:
        print(f"\nlmtrain tokens/s / transformers.Trainer = {a / b:.2f} (target >= 1.2)")
    if med("lmtrain", "mfu") is not None:
        print(f"lmtrain MFU = {med('lmtrain', 'mfu'):.1%} (target >= 50% on GPU)")
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
