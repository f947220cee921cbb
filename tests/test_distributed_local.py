"""distributed.py in one process: environment, device and precision choice, the Runtime's operations, the
model wrappers -- and the collective paths over a one-process gloo group (tests/test_distributed.py covers
two processes under torchrun)."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from lmtrain import TrainingArguments
from lmtrain.distributed import (
    Runtime,
    _repeated_blocks,
    env_world,
    full_state_dicts,
    load_full_state_dicts,
    pick_device,
    setup_runtime,
    shard_model,
    unwrap,
    wrap_model,
)
from tests.conftest import tiny_gpt2

CPU = torch.device("cpu")
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@pytest.fixture
def single_process(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)


# ---- environment and device -----------------------------------------------------------------------


def test_env_world_reads_torchrun_variables(monkeypatch, single_process):
    assert env_world() == (0, 0, 1)
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert env_world() == (5, 1, 8)


def test_pick_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(use_cpu=False, local_rank=3) == torch.device("cuda", 3)
    assert pick_device(use_cpu=True, local_rank=3) == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device() == CPU
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device() == torch.device("mps")
    assert pick_device(use_cpu=True) == CPU


def test_setup_runtime_on_one_cpu_process(tmp_path, single_process):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, bf16=True, report_to="none")
    rt = setup_runtime(args)
    assert (rt.device, rt.rank, rt.local_rank, rt.world_size) == (CPU, 0, 0, 1)
    assert rt.amp_dtype is torch.bfloat16 and rt.scaler is None and rt.notes == []
    assert rt.is_main and not rt.distributed
    assert not torch.distributed.is_initialized()


def test_fp16_on_the_cpu_trains_in_float32_and_says_so(tmp_path, single_process):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, fp16=True, report_to="none")
    rt = setup_runtime(args)
    assert rt.amp_dtype is None and rt.scaler is None
    assert len(rt.notes) == 1 and rt.notes[0].startswith("fp16 is not useful on the CPU")


def test_setup_runtime_takes_rank_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: nothing to join
    rt = setup_runtime(TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    assert (rt.rank, rt.local_rank, rt.world_size) == (3, 1, 1)
    assert not rt.is_main and not rt.distributed


# ---- Runtime ----------------------------------------------------------------------------------------


def test_main_and_distributed_flags():
    assert Runtime(CPU).is_main and not Runtime(CPU).distributed
    assert Runtime(CPU, rank=1, world_size=2).distributed and not Runtime(CPU, rank=1, world_size=2).is_main


def test_autocast_only_with_an_amp_dtype():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with Runtime(CPU).autocast():
        assert (a @ b).dtype == torch.float32
    with Runtime(CPU, amp_dtype=torch.bfloat16).autocast():
        assert (a @ b).dtype == torch.bfloat16


def test_backward_scales_the_loss_with_a_scaler():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    Runtime(CPU).backward((x * 3).sum())
    assert x.grad.tolist() == [3.0, 3.0]
    x.grad = None
    Runtime(CPU, scaler=torch.amp.GradScaler("cpu", init_scale=8.0)).backward((x * 3).sum())
    assert x.grad.tolist() == [24.0, 24.0]


class FSDPLike(torch.nn.Module):
    """Stands in for an FSDP2 module: gradient sync is a switch, there is no no_sync()."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def set_requires_gradient_sync(self, sync: bool) -> None:
        self.calls.append(("sync", sync))


class DDPLike(FSDPLike):
    """Stands in for DDP: no_sync() is a context manager."""

    def no_sync(self):
        import contextlib

        self.calls.append("no_sync")
        return contextlib.nullcontext()


def test_no_sync_skips_the_all_reduce_on_all_but_the_last_micro_batch():
    model = DDPLike()
    for last in (False, True):
        with Runtime(CPU).no_sync(model, last):  # one process: nothing to skip
            pass
    assert model.calls == []
    two = Runtime(CPU, world_size=2)
    with two.no_sync(model, last_micro_batch=False):
        pass
    with two.no_sync(model, last_micro_batch=True):
        pass
    assert model.calls == ["no_sync"]


def test_no_sync_under_fsdp_toggles_gradient_sync():
    model = FSDPLike()
    rt = Runtime(CPU, world_size=2, fsdp=True)
    with rt.no_sync(model, last_micro_batch=False):
        pass
    with rt.no_sync(model, last_micro_batch=True):
        pass
    assert model.calls == [("sync", False), ("sync", True)]


def test_one_process_reductions_are_identities(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("no collective on one process")

    monkeypatch.setattr(torch.distributed, "all_reduce", fail)
    monkeypatch.setattr(torch.distributed, "barrier", fail)
    rt = Runtime(CPU)
    t = torch.tensor([1.5, 2.5])
    assert rt.all_reduce_sum(t) is t and t.tolist() == [1.5, 2.5]
    assert rt.sum_int(7) == 7
    assert rt.sum_ints(1, 2, 3) == [1, 2, 3]
    rt.barrier()
    rt.synchronize()
    on_device = rt.sum_on_device(11)
    assert on_device.dim() == 0 and on_device.dtype == torch.int64 and int(on_device) == 11


# ---- wrappers -----------------------------------------------------------------------------------


class Holder(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, attr: str) -> None:
        super().__init__()
        setattr(self, attr, inner)


def test_unwrap_finds_the_model_inside_ddp_and_compile_in_either_order():
    model = torch.nn.Linear(2, 2)
    assert unwrap(model) is model
    assert unwrap(Holder(model, "module")) is model
    assert unwrap(Holder(model, "_orig_mod")) is model
    assert unwrap(Holder(Holder(model, "_orig_mod"), "module")) is model  # DDP(compile(model))
    assert unwrap(Holder(Holder(model, "module"), "_orig_mod")) is model  # compile(DDP(model))


def test_wrap_model_on_one_process_leaves_the_model_or_compiles_it():
    model = torch.nn.Linear(2, 2)
    assert wrap_model(model, Runtime(CPU)) is model
    assert wrap_model(model, Runtime(CPU), args=None, compile=False) is model
    compiled = wrap_model(model, Runtime(CPU), compile=True)  # compiles lazily, on the first call
    assert compiled is not model and unwrap(compiled) is model
    assert wrap_model(model, Runtime(CPU, world_size=2, fsdp=True)) is model  # FSDP2 shards in place


class Mixed(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.odd = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2)])
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(2)])


def test_repeated_blocks_are_the_largest_uniform_module_list():
    model = tiny_gpt2()
    assert _repeated_blocks(model) == list(model.transformer.h)
    mixed = Mixed()
    assert _repeated_blocks(mixed) == list(mixed.blocks)
    assert _repeated_blocks(torch.nn.Linear(2, 2)) == []


def test_full_state_dicts_without_fsdp_are_none():
    assert full_state_dicts(torch.nn.Linear(2, 2), None, Runtime(CPU)) == (None, None)


# ---- the collective paths, over a one-process gloo group ------------------------------------------


@pytest.fixture
def gloo_group(tmp_path):
    """A real process group of one rank; Runtimes built on it with world_size=2 take the distributed paths."""
    import torch.distributed as dist

    assert not dist.is_initialized()
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_reductions_go_through_the_process_group(gloo_group):
    rt = Runtime(CPU, world_size=2)  # takes the distributed code paths; the group has one member
    t = torch.tensor([1.0, 2.0])
    assert rt.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert rt.sum_ints(3, 4) == [3, 4] and rt.sum_int(9) == 9
    assert int(rt.sum_on_device(5)) == 5
    rt.barrier()


def test_wrap_model_passes_the_ddp_options(gloo_group, tmp_path):
    from torch.nn.parallel import DistributedDataParallel

    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        ddp_find_unused_parameters=True,
        ddp_bucket_cap_mb=1,
        ddp_broadcast_buffers=False,
    )
    model = tiny_gpt2()
    ddp = wrap_model(model, Runtime(CPU, world_size=2), args)
    assert isinstance(ddp, DistributedDataParallel) and ddp.module is model and unwrap(ddp) is model
    assert ddp.find_unused_parameters is True
    assert ddp.broadcast_buffers is False
    assert ddp.bucket_bytes_cap == 1024 * 1024
    rt = Runtime(CPU, world_size=2)
    with rt.no_sync(ddp, last_micro_batch=False):
        assert not ddp.require_backward_grad_sync
    with rt.no_sync(ddp, last_micro_batch=True):
        assert ddp.require_backward_grad_sync


def test_fsdp_full_state_dicts_round_trip(gloo_group):
    reference = {k: v.clone() for k, v in tiny_gpt2(seed=3).state_dict().items()}
    model = tiny_gpt2(seed=3)
    rt = Runtime(CPU, world_size=2)
    shard_model(model, rt)
    assert rt.fsdp
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    msd, osd = full_state_dicts(model, optimizer, rt)
    # with one rank the gathered tensors may share storage with the model: keep a copy of what was saved
    msd, osd = copy.deepcopy(msd), copy.deepcopy(osd)
    for key, value in msd.items():
        assert torch.equal(value, reference[key]), key
    assert osd is not None and "state" in osd and "param_groups" in osd
    # load different weights, then the gathered ones back
    other = {k: torch.zeros_like(v) for k, v in msd.items()}
    load_full_state_dicts(model, optimizer, other, None, rt)
    assert all(float(v.abs().sum()) == 0 for v in full_state_dicts(model, None, rt)[0].values())
    load_full_state_dicts(model, optimizer, msd, osd, rt)
    again, _ = full_state_dicts(model, None, rt)
    for key, value in again.items():
        assert torch.equal(value, reference[key]), key


def test_an_initialised_group_is_not_joined_again(gloo_group, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")

    def fail(*a, **k):
        raise AssertionError("init_process_group called twice")

    monkeypatch.setattr(torch.distributed, "init_process_group", fail)
    rt = setup_runtime(TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    assert rt.distributed and rt.world_size == 2
    assert os.environ["WORLD_SIZE"] == "2"
