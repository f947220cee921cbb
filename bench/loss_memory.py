"""Memory and time of the language-model head + loss: full logits vs lmtrain's chunked linear + cross-entropy.

The shapes of GPT-2 124M's head (hidden 768, vocabulary 50304) over batch x 1024 tokens. Each variant runs
one forward + backward in its own subprocess, so that peak figures do not mix:

- on CUDA the peak is `torch.cuda.max_memory_allocated()` above what the inputs already hold;
- on the CPU it is the growth of the process's peak resident set (ru_maxrss) over the step; large tensors are
  mmap'ed and returned on free, so this tracks the tensors' bytes to within a few MiB.

Time is the median of --repeats further steps. Variants: `full` (logits, F.cross_entropy on their float32
upcast, as lmtrain without loss_chunk_size; with --compile the loss is compiled, as lmtrain does under
torch_compile) and `chunk-N` (linear_cross_entropy_sum, N tokens at a time).

    python bench/loss_memory.py                       # CPU: float32, 8 x 1024 tokens
    python bench/loss_memory.py --device cuda --bf16 --batch 16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def child(opts: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT / "src"))
    from lmtrain.training.linear_ce import linear_cross_entropy_sum

    device = torch.device(opts.device)
    g = torch.Generator(device).manual_seed(0)
    n = opts.batch * opts.seq
    # scaled in place: a temporary copy would raise the peak RSS that the step is measured against
    hidden = torch.randn(n, opts.hidden, device=device, generator=g).mul_(0.5).requires_grad_()
    weight = torch.randn(opts.vocab, opts.hidden, device=device, generator=g).mul_(0.02).requires_grad_()
    labels = torch.randint(0, opts.vocab, (n,), device=device, generator=g)

    def full(h, w, y):
        return F.cross_entropy((h @ w.t()).float(), y, reduction="sum")

    if opts.variant == "full":
        loss_fn = torch.compile(full, dynamic=False) if opts.compile else full
    else:
        chunk = int(opts.variant.split("-")[1])
        fused = torch.compile(linear_cross_entropy_sum, dynamic=False) if opts.compile else linear_cross_entropy_sum

        def loss_fn(h, w, y):
            return fused(h, w, y, None, 0.0, chunk)

    def step() -> float:
        hidden.grad = weight.grad = None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.bf16):
            loss = loss_fn(hidden, weight, labels)
        loss.backward()
        return float(loss)

    if opts.compile:  # compile (and its own allocations) before measuring
        step()
    hidden.grad = weight.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = peak_rss_bytes()
    loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = peak_rss_bytes() - base
    times = []
    for _ in range(opts.repeats):
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return {"variant": opts.variant, "loss": loss, "peak_bytes": peak, "seconds": statistics.median(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--chunks", default="1024,4096", help="chunk sizes in tokens, comma-separated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="the matmuls under bf16 autocast (as bf16 training)")
    p.add_argument("--compile", action="store_true", help="torch.compile both losses (as torch_compile)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.variant:
        print(json.dumps(child(opts)), flush=True)
        return
    variants = ["full"] + [f"chunk-{c}" for c in opts.chunks.split(",") if c]
    passed = (
        [f"--{k}={getattr(opts, k)}" for k in ("device", "batch", "seq", "hidden", "vocab", "repeats")]
        + ["--bf16"] * opts.bf16
        + ["--compile"] * opts.compile
    )
    results = []
    for v in variants:
        proc = subprocess.run([sys.executable, __file__, *passed, "--variant", v], capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines()[::-1] if x.startswith("{")), None)
        if proc.returncode or line is None:
            print(f"{v} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results.append(json.loads(line))
        print(f"{v}: {results[-1]}", file=sys.stderr, flush=True)
    tokens = opts.batch * opts.seq
    print(
        f"\nhead {opts.hidden} x {opts.vocab}, {opts.batch} x {opts.seq} = {tokens} tokens, {opts.device}, "
        f"{'bf16 autocast' if opts.bf16 else 'float32'}{', compiled' if opts.compile else ''}; "
        f"forward + backward, time = median of {opts.repeats}\n"
    )
    print("| variant | peak memory MiB | memory / full | seconds | time / full | loss |\n|---|---|---|---|---|---|")
    ref = next((r for r in results if r["variant"] == "full"), None)
    for r in results:
        mem_ratio = f"{r['peak_bytes'] / ref['peak_bytes']:.3f}" if ref and ref["peak_bytes"] > 0 else "-"
        time_ratio = f"{r['seconds'] / ref['seconds']:.2f}" if ref else "-"
        print(
            f"| {r['variant']} | {r['peak_bytes'] / 2**20:,.0f} | {mem_ratio} | {r['seconds']:.3f} | {time_ratio} "
            f"| {r['loss']:.6g} |"
        )
    logits = tokens * opts.vocab
    print(
        f"\nfor scale: the logits are {logits * 4 / 2**20:,.0f} MiB in float32, {logits * 2 / 2**20:,.0f} MiB in bf16"
    )
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
