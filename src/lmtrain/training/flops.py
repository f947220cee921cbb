"""Model FLOPs per token and the device's peak, for tokens/s -> MFU.

MFU = achieved FLOP/s / peak FLOP/s, with training FLOPs per token = 6*N + 12*L*d*T (N parameters
without the embeddings unless tied to the output layer, L layers, d width, T sequence length): the
PaLM-paper count that nanoGPT and llm.c report.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Optional

import torch

from ..distributed import unwrap

# Dense peak FLOP/s by GPU name fragment: (bf16/fp16, fp32 without tf32). First match wins.
GPU_PEAK = (
    ("H200", 989e12, 67e12),
    ("H100 PCIe", 756e12, 51e12),
    ("H100", 989e12, 67e12),
    ("GH200", 989e12, 67e12),
    ("B200", 2250e12, 80e12),
    ("A100", 312e12, 19.5e12),
    ("A10G", 125e12, 31.2e12),
    ("A10", 125e12, 31.2e12),
    ("L40S", 362e12, 91.6e12),
    ("L40", 181e12, 90.5e12),  # (before "L4", which its name contains)
    ("L4", 121e12, 30.3e12),
    ("RTX 4090", 165e12, 82.6e12),
    ("RTX 3090", 71e12, 35.6e12),
    ("V100", 125e12, 15.7e12),
    ("T4", 65e12, 8.1e12),
)


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """6*N + 12*L*d*T for a transformers model; 6*N for anything without a config."""
    model = unwrap(model)
    n = sum(p.numel() for p in model.parameters())
    config = getattr(model, "config", None)
    hf: Any = model  # its transformers methods are looked up with hasattr (nn.Module's stubs: Tensor | Module)
    emb = hf.get_input_embeddings() if hasattr(hf, "get_input_embeddings") else None
    out = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    tied = emb is not None and out is not None and out.weight is emb.weight
    if emb is not None and not tied:
        n -= emb.weight.numel()
    pos = getattr(getattr(model, "transformer", None), "wpe", None)  # GPT-2 learned positions
    if isinstance(pos, torch.nn.Embedding):
        n -= pos.weight.numel()
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0) or 0
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0) or 0
    return 6.0 * n + 12.0 * layers * width * seq_len


@functools.lru_cache(maxsize=None)
def _cpu_peak(dtype: torch.dtype) -> float:
    """A measured estimate: the best of a few 512x512 matmuls (about 50 ms)."""
    g = torch.Generator().manual_seed(0)  # never the global RNG: a resumed run's dropout must not shift
    a = torch.randn(512, 512, dtype=dtype, generator=g)
    b = torch.randn(512, 512, dtype=dtype, generator=g)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * 512**3 / best


def peak_flops(device: torch.device, amp_dtype: Optional[torch.dtype]) -> Optional[float]:
    """Peak dense FLOP/s of `device` in the precision used (None when unknown)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for fragment, half, fp32 in GPU_PEAK:
            if fragment in name:
                if amp_dtype is not None:
                    return half
                return half / 2 if torch.backends.cuda.matmul.allow_tf32 else fp32  # tf32 is half of bf16
        return None
    if device.type == "cpu":
        return _cpu_peak(amp_dtype or torch.float32)
    return None


def mfu_scale(model: torch.nn.Module, seq_len: Optional[int], rt: Any) -> Optional[float]:
    """FLOPs per token / peak FLOP/s of all processes, so that MFU = tokens/s * this (None: unknown)."""
    if not seq_len:
        return None
    peak = peak_flops(rt.device, rt.amp_dtype)
    if not peak:
        return None
    return flops_per_token(model, seq_len) / (peak * rt.world_size)
