#!/usr/bin/env python3
"""Compare lmtrain.Trainer, transformers.Trainer and a bare PyTorch loop on the same job.

Same model (GPT-2: 4 layers, 256 wide, 4 heads, block 128, dropout 0), same data (the
shared Shakespeare corpus), same tokenizer files, same optimizer (AdamW, same lr / betas /
eps / weight decay / linear schedule / grad clipping 1.0), same number of optimizer steps.
Each trainer runs in a fresh child process (``--run NAME``), so import time is honest; the
parent interleaves the three ``--repeats`` times and reports medians.

    python bench/compare_hf.py                          # CPU: 10 steps x 3 repeats
    python bench/compare_hf.py --device cuda --steps 200 --bf16 --json out.json

Phases (seconds, measured from the moment the parent spawns the child):
  import      spawn + interpreter start + importing everything the run needs
  prep        files -> training/eval datasets, cold cache (tokenizer loading excluded)
  first step  spawn -> first optimizer step completed (includes model build, loaders ...)
  train tok/s steady state: tokens of steps warmup+1..N over their wall time
  eval tok/s  evaluation over the first --eval_blocks validation blocks
  total       spawn -> evaluation finished (the warm re-preparation is timed after it)
"""

import os
import sys
import time

# Taken before any heavy import: the child's clock origin.
_T0_PERF = time.perf_counter()
_T0_WALL = time.time()

RESULT_TAG = "@@BENCH_RESULT "
RUNNERS = ("lmtrain", "hf", "bare")
LABELS = {"lmtrain": "lmtrain", "hf": "transformers.Trainer", "bare": "bare loop"}

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------------
# arguments


def parse_args(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    corpus = os.path.normpath(os.path.join(REPO, "..", "shared", "corpus", "shakespeare"))
    p.add_argument("--train_file", default=os.path.join(corpus, "train.txt"))
    p.add_argument("--validation_file", default=None, help="default: valid.txt next to --train_file")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 10 on CPU, 200 on CUDA)")
    p.add_argument(
        "--warmup_steps_excluded",
        type=int,
        default=3,
        help="steps excluded from the steady-state train tok/s (default 3)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (trainers: bf16=True; bare: autocast)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--block_size", type=int, default=128)
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=256)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--vocab_size", type=int, default=8192, help="BPE vocabulary trained on --train_file")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--optim",
        default="adamw_torch_fused",
        choices=["adamw_torch_fused", "adamw_torch"],
        help="the same AdamW kernel for all three (bare loop: fused=True / foreach=True)",
    )
    p.add_argument("--logging_steps", type=int, default=10)
    p.add_argument(
        "--eval_blocks",
        type=int,
        default=None,
        help="validation blocks to evaluate (0 = all; default 64 on CPU, all on CUDA)",
    )
    p.add_argument("--only", default=",".join(RUNNERS), help="comma list of runners (lmtrain,hf,bare)")
    p.add_argument("--tokenizer_dir", default=None, help="use this saved tokenizer instead of training one")
    p.add_argument("--json", default=None, help="write raw per-run results and medians here")
    p.add_argument("--verbose", action="store_true", help="show the children's output")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child run")
    # child mode (internal)
    p.add_argument("--run", choices=RUNNERS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--spawn_time", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.validation_file is None:
        args.validation_file = os.path.join(os.path.dirname(args.train_file), "valid.txt")
    return args


# --------------------------------------------------------------------------------------------
# child side


class Clock:
    """Phase timestamps on one perf_counter clock, reported from the parent's spawn time."""

    def __init__(self, spawn_time):
        # Wall clocks agree across processes; the spawn overhead is added once.
        self.spawn = max(0.0, _T0_WALL - spawn_time) if spawn_time else 0.0
        self.marks = {}

    def mark(self, name):
        self.marks[name] = time.perf_counter()

    def since_spawn(self, name):
        return self.spawn + self.marks[name] - _T0_PERF

    def between(self, a, b):
        return self.marks[b] - self.marks[a]


def _sync(device):
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _step_timer_class(base, device, warmup, max_steps):
    """A callback (subclass of the trainer's own TrainerCallback) timing optimizer steps."""

    class StepTimer(base):
        def __init__(self):
            self.times = {}

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            if step in (1, warmup, max_steps):
                _sync(device)
                self.times[step] = time.perf_counter()

    return StepTimer


def _model(args, vocab_size, tok, device):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=args.block_size,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(args.seed)
    return GPT2LMHeadModel(config)


def _trainer_kwargs(args, output_dir, device):
    kw = dict(
        output_dir=output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        logging_steps=args.logging_steps,
        save_strategy="no",
        report_to="none",
        dataloader_drop_last=True,
        disable_tqdm=True,
        eval_strategy="no",
        learning_rate=args.lr,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        warmup_steps=0,
        seed=args.seed,
        optim=args.optim,
    )
    if args.bf16:
        kw["bf16"] = True
    if device == "cpu":
        kw["use_cpu"] = True
    return kw


def _loss_at(log_history, step):
    """The logged training loss (mean over the logging window) at ``step``."""
    for r in log_history:
        if "loss" in r and r.get("step") == step:
            return float(r["loss"])
    return None


def _loss_step(args):
    """The last step both trainers log at: the comparison point for the loss."""
    return args.steps - args.steps % args.logging_steps if args.steps >= args.logging_steps else None


def _steady_tok_s(times, warmup, steps, tokens_per_step):
    if steps > warmup and warmup in times and steps in times and times[steps] > times[warmup]:
        return (steps - warmup) * tokens_per_step / (times[steps] - times[warmup])
    return None


def _peak_rss_mb():
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / (1024 * 1024) if sys.platform == "darwin" else kb / 1024


def run_lmtrain(args, clock, device, workdir):
    from transformers import AutoTokenizer

    import lmtrain
    from lmtrain.data.pack import prepare_datasets

    Trainer, TrainingArguments = lmtrain.Trainer, lmtrain.TrainingArguments
    collator, base_cb = lmtrain.default_data_collator, lmtrain.TrainerCallback
    clock.mark("imported")

    tok = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    clock.mark("tokenizer")
    cache_dir = os.path.join(workdir, "lmtrain_cache")
    train_ds, eval_ds, info = prepare_datasets(
        train_files=[args.train_file],
        tokenizer=tok,
        block_size=args.block_size,
        validation_files=[args.validation_file],
        cache_dir=cache_dir,
    )
    clock.mark("prepared")
    if args.eval_blocks and eval_ds is not None and len(eval_ds) > args.eval_blocks:
        eval_ds = _head_blocks(eval_ds, args.eval_blocks)

    model = _model(args, len(tok), tok, device)
    timer = _step_timer_class(base_cb, device, args.warmup_steps_excluded, args.steps)()
    trainer = Trainer(
        model,
        args=TrainingArguments(**_trainer_kwargs(args, os.path.join(workdir, "out"), device)),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        callbacks=[timer],
    )
    out = trainer.train()
    clock.mark("trained")
    _sync(device)
    clock.mark("eval_start")
    metrics = trainer.evaluate()
    _sync(device)
    clock.mark("eval_end")
    res = dict(
        train_blocks=len(train_ds),
        eval_blocks=len(eval_ds),
        train_loss_avg=float(out.training_loss),
        final_train_loss=_loss_at(trainer.state.log_history, _loss_step(args)),
        eval_loss=metrics.get("eval_loss"),
        step_times=timer.times,
        info={k: v for k, v in info.items() if k != "cache_dirs"},
    )
    res.update(_finish(clock, device))
    # Warm re-preparation: same cache dir, now filled.
    t = time.perf_counter()
    prepare_datasets(
        train_files=[args.train_file],
        tokenizer=tok,
        block_size=args.block_size,
        validation_files=[args.validation_file],
        cache_dir=cache_dir,
    )
    res["prep_warm"] = time.perf_counter() - t
    return res


def _head_blocks(ds, n):
    """The first n blocks of an lmtrain BlockDataset, as a BlockDataset (keeps its fast batch reads)."""
    if hasattr(ds, "block_indices") and hasattr(ds, "tokens"):
        return type(ds)(
            ds.tokens,
            ds.block_size,
            block_indices=ds.block_indices[:n],
            mlm=ds.mlm,
            cls_token_id=ds.cls_token_id,
            sep_token_id=ds.sep_token_id,
            bytes_per_token=ds.bytes_per_token,
        )
    import torch

    return torch.utils.data.Subset(ds, range(n))


def _hf_prepare(args, tok, cache_dir):
    """run_clm.py's preparation: text loader, tokenize, group_texts."""
    from datasets import load_dataset

    raw = load_dataset(
        "text",
        data_files={"train": args.train_file, "validation": args.validation_file},
        cache_dir=cache_dir,
        keep_linebreaks=True,  # run_clm.py's default
    )

    def tokenize_function(examples):
        return tok(examples["text"])

    tokenized = raw.map(tokenize_function, batched=True, remove_columns=["text"], desc="Running tokenizer on dataset")
    block_size = args.block_size

    from _recipe import make_group_texts  # bench/ is on sys.path when the script runs

    group_texts = make_group_texts(block_size)

    return tokenized.map(group_texts, batched=True, desc=f"Grouping texts in chunks of {block_size}")


def run_hf(args, clock, device, workdir):
    from datasets import load_dataset  # noqa: F401  (part of the run's imports)
    from transformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments, default_data_collator

    clock.mark("imported")
    tok = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    clock.mark("tokenizer")
    cache_dir = os.path.join(workdir, "hf_datasets_cache")
    lm = _hf_prepare(args, tok, cache_dir)
    train_ds, eval_ds = lm["train"], lm["validation"]
    clock.mark("prepared")
    if args.eval_blocks and len(eval_ds) > args.eval_blocks:
        eval_ds = eval_ds.select(range(args.eval_blocks))

    model = _model(args, len(tok), tok, device)
    timer = _step_timer_class(TrainerCallback, device, args.warmup_steps_excluded, args.steps)()
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**_trainer_kwargs(args, os.path.join(workdir, "out"), device)),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=default_data_collator,
        callbacks=[timer],
    )
    out = trainer.train()
    clock.mark("trained")
    _sync(device)
    clock.mark("eval_start")
    metrics = trainer.evaluate()
    _sync(device)
    clock.mark("eval_end")
    res = dict(
        train_blocks=len(train_ds),
        eval_blocks=len(eval_ds),
        train_loss_avg=float(out.training_loss),
        final_train_loss=_loss_at(trainer.state.log_history, _loss_step(args)),
        eval_loss=metrics.get("eval_loss"),
        step_times=timer.times,
    )
    res.update(_finish(clock, device))
    t = time.perf_counter()
    _hf_prepare(args, tok, cache_dir)  # warm: datasets' cache hit
    res["prep_warm"] = time.perf_counter() - t
    return res


def _bare_blocks(tok, path, block_size):
    import numpy as np

    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    ids = tok(lines, add_special_tokens=False)["input_ids"]
    flat = np.fromiter((i for seq in ids for i in seq), dtype=np.int64)
    n = len(flat) // block_size
    return flat[: n * block_size].reshape(n, block_size)


def run_bare(args, clock, device, workdir):
    import contextlib

    import torch
    from transformers import AutoTokenizer

    clock.mark("imported")
    tok = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    clock.mark("tokenizer")
    train = torch.from_numpy(_bare_blocks(tok, args.train_file, args.block_size))
    valid = torch.from_numpy(_bare_blocks(tok, args.validation_file, args.block_size))
    clock.mark("prepared")
    if args.eval_blocks:
        valid = valid[: args.eval_blocks]

    dev = torch.device(device)
    model = _model(args, len(tok), tok, device).to(dev)
    model.train()
    fused = args.optim == "adamw_torch_fused"
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=args.lr,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        **({"fused": True} if fused else {"foreach": True}),
    )
    steps, B, warmup, log_every = args.steps, args.batch_size, args.warmup_steps_excluded, args.logging_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (steps - s) / max(1, steps)))
    amp = (lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext
    g = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(len(train), generator=g)
    times, losses = {}, {}
    loss_sum = torch.zeros((), device=dev)
    pos = 0
    for step in range(1, steps + 1):
        if pos + B > len(perm):
            perm, pos = torch.randperm(len(train), generator=g), 0
        x = train[perm[pos : pos + B]].to(dev, non_blocking=True)
        pos += B
        with amp():
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        if step in (1, warmup, steps):
            _sync(device)
            times[step] = time.perf_counter()
        if step % log_every == 0:  # the only host sync besides the timer's
            losses[step] = loss_sum.item() / log_every
            loss_sum.zero_()
    clock.mark("trained")
    _sync(device)
    clock.mark("eval_start")
    model.eval()
    total, n = torch.zeros((), device=dev), 0
    with torch.inference_mode(), amp():
        for i in range(0, len(valid), B):
            x = valid[i : i + B].to(dev, non_blocking=True)
            total += model(input_ids=x, labels=x).loss.float()
            n += 1
    eval_loss = (total / max(n, 1)).item()
    clock.mark("eval_end")
    res = dict(
        train_blocks=len(train),
        eval_blocks=len(valid),
        final_train_loss=losses.get(_loss_step(args)),
        eval_loss=eval_loss,
        step_times=times,
    )
    res.update(_finish(clock, device))
    return res


def _finish(clock, device):
    out = {"peak_rss_mb": _peak_rss_mb()}
    if device == "cuda":
        import torch

        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def child_main(args):
    clock = Clock(args.spawn_time)
    device = args.device
    workdir = args.workdir
    fn = {"lmtrain": run_lmtrain, "hf": run_hf, "bare": run_bare}[args.run]
    res = fn(args, clock, device, workdir)
    m = clock.marks
    tokens_per_step = args.batch_size * args.block_size
    times = res.pop("step_times")
    res.update(
        runner=args.run,
        device=device,
        bf16=args.bf16,
        steps=args.steps,
        import_s=clock.since_spawn("imported"),
        tokenizer_load_s=clock.between("imported", "tokenizer"),
        prep_s=clock.between("tokenizer", "prepared"),
        first_step_s=(clock.spawn + times[1] - _T0_PERF) if 1 in times else None,
        train_tok_s=_steady_tok_s(times, args.warmup_steps_excluded, args.steps, tokens_per_step),
        eval_tok_s=res["eval_blocks"] * args.block_size / (m["eval_end"] - m["eval_start"]),
        eval_s=m["eval_end"] - m["eval_start"],
        total_s=clock.since_spawn("eval_end"),
        spawn_s=clock.spawn,
    )
    print(RESULT_TAG + __import__("json").dumps(res), flush=True)


# --------------------------------------------------------------------------------------------
# parent side


def train_tokenizer(args, out_dir):
    """Train the byte-level BPE once (lmtrain's trainer if importable) and save it."""
    sys.path.insert(0, os.path.join(REPO, "src"))
    try:
        from lmtrain.data.bpe import train_bpe_tokenizer

        tok = train_bpe_tokenizer([args.train_file], vocab_size=args.vocab_size)
    except ImportError:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
        from transformers import PreTrainedTokenizerFast

        special = ["<|endoftext|>", "<pad>", "<mask>"]
        t = Tokenizer(models.BPE())
        t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        t.decoder = decoders.ByteLevel()
        t.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=args.vocab_size,
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        t.train([args.train_file], trainer=trainer)
        tok = PreTrainedTokenizerFast(
            tokenizer_object=t,
            eos_token=special[0],
            bos_token=special[0],
            unk_token=special[0],
            pad_token=special[1],
            mask_token=special[2],
            clean_up_tokenization_spaces=False,
        )
    tok.save_pretrained(out_dir)
    return len(tok)


def _child_env(workdir):
    env = dict(os.environ)
    src = os.path.join(REPO, "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="true",  # fresh processes, no fork after use: let the Rust encoder use all cores
        HF_DATASETS_CACHE=os.path.join(workdir, "hf_datasets_cache"),
        LMTRAIN_CACHE=os.path.join(workdir, "lmtrain_cache"),
        PYTHONUNBUFFERED="1",
    )
    # Byte-compile caches as an installed package has them (lmtrain runs from src/, gitignored
    # __pycache__); warm_imports() fills them before the timed runs.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


WARM_IMPORTS = {
    "lmtrain": "import lmtrain; lmtrain.Trainer, lmtrain.TrainingArguments, lmtrain.default_data_collator; "
    "import lmtrain.data.pack; from transformers import AutoTokenizer, GPT2LMHeadModel",
    "hf": "from datasets import load_dataset; from transformers import AutoTokenizer, GPT2LMHeadModel, Trainer, "
    "TrainingArguments, TrainerCallback, default_data_collator; import transformers.trainer",
    "bare": "import numpy, torch; from transformers import AutoTokenizer, GPT2LMHeadModel",
}


def warm_imports(names, base_tmp):
    """One untimed import of each runner's modules: .pyc files written, files in the page cache."""
    import subprocess

    env = _child_env(base_tmp)
    for name in names:
        proc = subprocess.run(
            [sys.executable, "-c", WARM_IMPORTS[name]],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if proc.returncode != 0:
            print(f"warning: warm-up import for {name} failed:\n{proc.stdout[-2000:]}", file=sys.stderr)


def run_child(name, args, tok_dir, base_tmp, idx):
    import json
    import subprocess
    import tempfile

    workdir = tempfile.mkdtemp(prefix=f"{name}-{idx}-", dir=base_tmp)
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--run",
        name,
        "--workdir",
        workdir,
        "--tokenizer_dir",
        tok_dir,
        "--train_file",
        args.train_file,
        "--validation_file",
        args.validation_file,
        "--steps",
        str(args.steps),
        "--warmup_steps_excluded",
        str(args.warmup_steps_excluded),
        "--device",
        args.device,
        "--batch_size",
        str(args.batch_size),
        "--block_size",
        str(args.block_size),
        "--n_layer",
        str(args.n_layer),
        "--n_embd",
        str(args.n_embd),
        "--n_head",
        str(args.n_head),
        "--lr",
        repr(args.lr),
        "--seed",
        str(args.seed),
        "--optim",
        args.optim,
        "--logging_steps",
        str(args.logging_steps),
        "--eval_blocks",
        str(args.eval_blocks),
    ]
    if args.bf16:
        cmd.append("--bf16")
    env = _child_env(workdir)
    cmd += ["--spawn_time", repr(time.time())]  # last thing before the spawn
    proc = subprocess.run(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=args.timeout
    )
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG) :])
    if args.verbose or proc.returncode != 0 or result is None:
        print(f"----- {name} (exit {proc.returncode}) -----\n{proc.stdout[-8000:]}", file=sys.stderr)
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    if result is None:
        return {"runner": name, "error": f"exit {proc.returncode}", "output_tail": proc.stdout[-2000:]}
    return result


COLUMNS = [
    ("import s", "import_s", "{:.2f}"),
    ("prep s", "prep_s", "{:.2f}"),
    ("warm prep s", "prep_warm", "{:.2f}"),
    ("time to first step s", "first_step_s", "{:.2f}"),
    ("train tok/s", "train_tok_s", "{:,.0f}"),
    ("eval tok/s", "eval_tok_s", "{:,.0f}"),
    ("total s", "total_s", "{:.2f}"),
    ("peak RSS MB", "peak_rss_mb", "{:,.0f}"),
]


def _median(values):
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    n = len(vals)
    return vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2


def summarize(runs, names):
    keys = [k for _, k, _ in COLUMNS] + [
        "final_train_loss",
        "eval_loss",
        "peak_cuda_mb",
        "tokenizer_load_s",
        "spawn_s",
        "train_loss_avg",
    ]
    med = {}
    for name in names:
        ok = [r for r in runs[name] if "error" not in r]
        med[name] = {k: _median([r.get(k) for r in ok]) for k in keys}
        med[name]["ok_runs"] = len(ok)
    return med


def _fmt(fmt, v):
    return "n/a" if v is None else fmt.format(v)


def _sub(a, b):
    return None if a is None or b is None else a - b


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def report(med, names, args, vocab):
    lines = []
    prec = "bf16" if args.bf16 else "fp32"
    lines.append(
        f"GPT-2 {args.n_layer}x{args.n_embd} ({args.n_head} heads), block {args.block_size}, batch {args.batch_size}, "
        f"vocab {vocab}, {args.steps} steps, {args.device} {prec}, {args.optim}, median of {args.repeats} "
        f"(steady-state tok/s excludes the first {args.warmup_steps_excluded} steps)"
    )
    lines.append("")
    lines.append("| trainer | " + " | ".join(c for c, _, _ in COLUMNS) + " |")
    lines.append("|---|" + "---:|" * len(COLUMNS))
    for name in names:
        m = med[name]
        cells = [_fmt(f, m.get(k)) for _, k, f in COLUMNS]
        tag = "" if m["ok_runs"] == args.repeats else f" ({m['ok_runs']}/{args.repeats} ok)"
        lines.append(f"| {LABELS[name]}{tag} | " + " | ".join(cells) + " |")
    lines.append("")
    k = _loss_step(args) or 0
    for name in names:
        m = med[name]
        lines.append(
            f"{LABELS[name]:>21}: train loss {_fmt('{:.4f}', m.get('final_train_loss'))} "
            f"(mean of steps {k - args.logging_steps + 1}-{k}), "
            f"eval loss {_fmt('{:.4f}', m.get('eval_loss'))}"
            + (f", peak CUDA {m['peak_cuda_mb']:.0f} MB" if m.get("peak_cuda_mb") else "")
        )
    lines.append("")
    L, H, B = med.get("lmtrain"), med.get("hf"), med.get("bare")
    if L and B:
        r = _ratio(L["train_tok_s"], B["train_tok_s"])
        lines.append(f"lmtrain train tok/s / bare loop = {_fmt('{:.2f}', r)} (target >= 0.97)")
    if L and H:
        # time to first step counts from the spawn, so it already includes the imports
        r = _ratio(L["first_step_s"], H["first_step_s"])
        lines.append(f"lmtrain import+first step / HF Trainer's = {_fmt('{:.2f}', r)} (target <= 0.5)")
        r = _ratio(_sub(L["first_step_s"], L["prep_s"]), _sub(H["first_step_s"], H["prep_s"]))
        lines.append(f"    the same without the cold data preparation = {_fmt('{:.2f}', r)}")
        lines.append(f"lmtrain train tok/s / HF Trainer = {_fmt('{:.2f}', _ratio(L['train_tok_s'], H['train_tok_s']))}")
    return "\n".join(lines)


def parent_main(args):
    import json
    import shutil
    import tempfile

    names = [n.strip() for n in args.only.split(",") if n.strip()]
    for n in names:
        if n not in RUNNERS:
            sys.exit(f"--only: unknown runner {n!r}; choose from {', '.join(RUNNERS)}")
    for f in (args.train_file, args.validation_file):
        if not os.path.isfile(f):
            sys.exit(f"no such file: {f}; pass --train_file / --validation_file")
    base_tmp = tempfile.mkdtemp(prefix="lmtrain-bench-")
    try:
        if args.tokenizer_dir:
            tok_dir = args.tokenizer_dir
            from transformers import AutoTokenizer

            vocab = len(AutoTokenizer.from_pretrained(tok_dir))
        else:
            tok_dir = os.path.join(base_tmp, "tokenizer")
            t = time.perf_counter()
            vocab = train_tokenizer(args, tok_dir)
            print(f"trained a {vocab}-token byte-level BPE in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        t = time.perf_counter()
        warm_imports(names, base_tmp)
        print(f"warm-up imports: {time.perf_counter() - t:.1f}s", file=sys.stderr)
        runs = {n: [] for n in names}
        for rep in range(args.repeats):
            # Rotate the order so no runner always goes first (cold page cache, CPU clocks).
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                t = time.perf_counter()
                r = run_child(name, args, tok_dir, base_tmp, rep)
                runs[name].append(r)
                status = (
                    "error"
                    if "error" in r
                    else (
                        f"tok/s {_fmt('{:,.0f}', r.get('train_tok_s'))}, first step {_fmt('{:.2f}', r.get('first_step_s'))}s, "
                        f"loss {_fmt('{:.4f}', r.get('final_train_loss'))}"
                    )
                )
                print(
                    f"[{rep + 1}/{args.repeats}] {LABELS[name]}: {time.perf_counter() - t:.1f}s ({status})",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        shutil.rmtree(base_tmp, ignore_errors=True)
    med = summarize(runs, names)
    text = report(med, names, args, vocab)
    print(text)
    if args.json:
        meta = {k: v for k, v in vars(args).items() if k not in ("run", "spawn_time", "workdir")}
        env = {"python": sys.version.split()[0]}
        try:
            import torch
            import transformers

            env.update(torch=torch.__version__, transformers=transformers.__version__)
            if args.device == "cuda":
                env["gpu"] = torch.cuda.get_device_name(0)
        except Exception:
            pass
        with open(args.json, "w") as f:
            json.dump(
                {"args": meta, "env": env, "vocab": vocab, "runs": runs, "median": med, "report": text}, f, indent=1
            )
    return 0 if all(m["ok_runs"] for m in med.values()) else 1


def main(argv=None):
    args = parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.steps is None:
        args.steps = 200 if args.device == "cuda" else 10
    if args.eval_blocks is None:
        args.eval_blocks = 0 if args.device == "cuda" else 64
    if args.run:
        child_main(args)
        return 0
    if args.steps <= args.warmup_steps_excluded:
        sys.exit(f"--steps must exceed --warmup_steps_excluded ({args.warmup_steps_excluded})")
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
