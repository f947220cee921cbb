"""lmtrain.training.checkpoint.rng: the random-number-generator state in a checkpoint, one file per rank."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from lmtrain.training.checkpoint import rng


@pytest.fixture(autouse=True)
def keep_global_generators():
    """These tests seed and restore the global generators: leave them to later tests as they were."""
    state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


def draws():
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), torch.randint(0, 1000, (4,)).tolist()


def test_restore_of_a_capture_repeats_python_numpy_and_torch_draws(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    draws()  # somewhere in the middle of a run
    path = tmp_path / rng.file_name(0, False)
    torch.save(rng.capture(), path)  # as a checkpoint holds it
    expected = draws()
    random.seed(10)
    np.random.seed(20)
    torch.manual_seed(30)
    assert draws() != expected
    rng.restore(torch.load(path, weights_only=False))
    assert draws() == expected


def test_capture_holds_transformers_keys():
    state = rng.capture()
    assert set(state) <= set(rng.KEYS) and {"python", "numpy", "cpu"} <= set(state)
    assert torch.equal(state["cpu"], torch.get_rng_state())


def test_file_names_are_transformers():
    assert rng.file_name(0, distributed=False) == "rng_state.pth"
    assert rng.file_name(0, distributed=True) == "rng_state_0.pth"
    assert rng.file_name(3, distributed=True) == "rng_state_3.pth"
    assert rng.rank_file("out", 20, 2) == os.path.join("out", ".rng-20.rng_state_2.pth")


def _names(ckpt, rank, world_size, present):
    """The name find() picks as the files `present` disappear one by one, front first."""
    for name in present:
        (ckpt / name).write_bytes(b"")
    picked = []
    for name in present:
        found = rng.find(str(ckpt), rank, world_size)
        picked.append(os.path.basename(found) if found else None)
        (ckpt / name).unlink()
    picked.append(rng.find(str(ckpt), rank, world_size))
    return picked


@pytest.mark.parametrize(
    "rank, world_size, order",
    [
        # one process: transformers' single name, its torchrun name (a run resumed on one process), older lmtrain's
        (0, 1, ["rng_state.pth", "rng_state_0.pth", "rng_state.pt"]),
        # rank 0 of two: its own per-rank file first
        (0, 2, ["rng_state_0.pth", "rng_state.pth", "rng_state.pt"]),
        (1, 2, ["rng_state_1.pth", "rng_state_1.pt"]),
    ],
)
def test_find_prefers_transformers_names_then_older_pt_files(tmp_path, rank, world_size, order):
    assert _names(tmp_path, rank, world_size, order) == order + [None]


def test_find_never_gives_a_rank_another_ranks_file(tmp_path):
    for name in ("rng_state.pth", "rng_state_0.pth", "rng_state.pt", "rng_state_2.pth", "rng_state_2.pt"):
        (tmp_path / name).write_bytes(b"")
    assert rng.find(str(tmp_path), 1, 3) is None
    assert rng.find(str(tmp_path), 2, 3) == str(tmp_path / "rng_state_2.pth")


def test_write_rank_file_leaves_the_state_beside_the_checkpoint(tmp_path):
    out = tmp_path / "run"  # created if missing
    torch.manual_seed(7)
    path = rng.write_rank_file(str(out), 40, 1)
    assert path == rng.rank_file(str(out), 40, 1) and os.path.isfile(path)
    expected = draws()
    saved = torch.load(path, weights_only=False)
    assert {"python", "numpy", "cpu"} <= set(saved)
    rng.restore(saved)
    assert draws() == expected
