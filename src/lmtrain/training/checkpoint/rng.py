"""Random-number-generator state in a checkpoint: what transformers saves, and one file per rank.

rank 0 writes `rng_state.pth` alone, or `rng_state_0.pth` beside the other ranks' `rng_state_<rank>.pth`
under torchrun (transformers' names). The other ranks write theirs next to the checkpoint being built
(`rank_file`) and rank 0 moves them inside before sealing it.
"""

from __future__ import annotations

import os
import random
from typing import Any, Dict, Optional

import numpy as np
import torch

KEYS = ("python", "numpy", "cpu", "cuda")


def capture(distributed: bool = False) -> Dict[str, Any]:
    """transformers' rng_state.pth content: one CUDA state alone, every device's under torchrun."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all() if distributed else torch.cuda.get_rng_state()
    return state


def restore(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, torch.Tensor):
            torch.cuda.set_rng_state(cuda)
        elif len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # saved with another device count: this process's own device
            torch.cuda.set_rng_state(cuda[min(torch.cuda.current_device(), len(cuda) - 1)])


def file_name(rank: int, distributed: bool) -> str:
    """This rank's file name inside a checkpoint."""
    return f"rng_state_{rank}.pth" if distributed else "rng_state.pth"


def rank_file(output_dir: str, step: int, rank: int) -> str:
    """Where a non-zero rank leaves its RNG state for rank 0 to move into checkpoint-<step>."""
    return os.path.join(output_dir, f".rng-{step}.{file_name(rank, True)}")


def write_rank_file(output_dir: str, step: int, rank: int) -> str:
    """A non-zero rank's RNG state, written beside the checkpoint rank 0 is about to save."""
    os.makedirs(output_dir, exist_ok=True)
    path = rank_file(output_dir, step, rank)
    torch.save(capture(distributed=True), path)
    return path


def find(ckpt_dir: str, rank: int, world_size: int) -> Optional[str]:
    """This rank's RNG file in a checkpoint: transformers' names first, then older lmtrain's `.pt` ones."""
    names = [file_name(rank, True)] if world_size > 1 else []
    names += ["rng_state.pth", "rng_state_0.pth"] if rank == 0 else []
    names += [f"rng_state_{rank}.pt"] if rank else ["rng_state.pt"]
    for name in names:
        if os.path.isfile(os.path.join(ckpt_dir, name)):
            return os.path.join(ckpt_dir, name)
    return None
