"""Where and how the model runs: device, precision, and (under torchrun) the process group.

Everything that differs between CPU, one GPU and many processes lives here, so the training loop
calls the same four things everywhere: `autocast()`, `backward(loss)`, `no_sync(model, last)` and
`all_reduce_sum(t)`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, ContextManager, Dict, Iterator, Optional, cast

import torch


def _destroy_process_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def _fsdp_sync(model: Any, sync: bool) -> Iterator[None]:
    # `model` was sharded by fully_shard, which gives its class FSDPModule's set_requires_gradient_sync
    model.set_requires_gradient_sync(sync)  # FSDP2: reduce-scatter only on the step's last micro-batch
    yield


def env_world() -> tuple:
    """(rank, local_rank, world_size) from torchrun's environment variables."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def pick_device(use_cpu: bool = False, local_rank: int = 0) -> torch.device:
    if not use_cpu and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if not use_cpu and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class Runtime:
    """Device, precision and process-group facts for one process."""

    device: torch.device
    amp_dtype: Optional[torch.dtype] = None
    """bf16/fp16 autocast dtype, or None for full precision."""
    scaler: Any = None
    """A GradScaler for fp16 (None otherwise)."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    notes: list = field(default_factory=list)
    """Adjustments made to the user's settings, shown in the start-up summary."""
    fsdp: bool = False
    """Parameters are sharded with FSDP2 (set by `shard_model`)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> ContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def no_sync(self, model: torch.nn.Module, last_micro_batch: bool) -> ContextManager:
        """Skip DDP's gradient all-reduce on all but the last micro-batch of a step."""
        if self.distributed and not last_micro_batch and hasattr(model, "no_sync"):
            ddp: Any = model  # DistributedDataParallel: nn.Module's stubs type unknown attributes as Tensor | Module
            return ddp.no_sync()
        if self.fsdp and hasattr(model, "set_requires_gradient_sync"):
            return _fsdp_sync(model, last_micro_batch)
        return contextlib.nullcontext()

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            torch.distributed.all_reduce(value)
        return value

    def sum_int(self, value: int) -> int:
        """Sum a host integer over ranks (token counts when logging); a no-op on one process."""
        return self.sum_ints(value)[0]

    def sum_on_device(self, value: int) -> torch.Tensor:
        """Sum a host integer over ranks into a 0-d device tensor. The copy and the all-reduce are queued
        on the device: the host does not wait (a step's label-token count under torchrun)."""
        t = torch.tensor([value], dtype=torch.int64)
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        else:
            t = t.to(self.device)
        if self.distributed:
            torch.distributed.all_reduce(t)
        return t[0]

    def sum_ints(self, *values: int) -> list:
        """Sum host integers over ranks in one all-reduce; a no-op on one process."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def setup_runtime(args: Any) -> Runtime:
    """Resolve device and precision from TrainingArguments; join the process group under torchrun."""
    rank, local_rank, world = env_world()
    device = pick_device(args.use_cpu, local_rank)
    rt = Runtime(device=device, rank=rank, local_rank=local_rank, world_size=world)
    if world > 1 and not torch.distributed.is_initialized():
        backend = args.ddp_backend or ("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        from datetime import timedelta

        timeout = timedelta(seconds=getattr(args, "ddp_timeout", 1800) or 1800)
        torch.distributed.init_process_group(backend=backend, timeout=timeout)
        # an orderly teardown: exiting with a live gloo group can abort ("terminate called ...")
        atexit.register(_destroy_process_group)
    if device.type == "cuda":
        tf32 = True if args.tf32 is None else args.tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    if args.bf16:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            from .errors import ConfigError

            raise ConfigError("bf16 was asked for but this GPU does not support it; use fp16 instead.")
        rt.amp_dtype = torch.bfloat16
    elif args.fp16:
        if device.type == "cpu":
            rt.notes.append("fp16 is not useful on the CPU; training in float32 (use bf16 for mixed precision).")
        else:
            rt.amp_dtype = torch.float16
            rt.scaler = torch.amp.GradScaler(device.type)
    return rt


def wrap_model(
    model: torch.nn.Module, rt: Runtime, args: Any = None, compile: Optional[bool] = None
) -> torch.nn.Module:
    """The module the loop trains: compiled when asked, DDP-wrapped under torchrun.

    `args` supplies torch_compile(_mode, _backend) and the ddp_* options of TrainingArguments.
    The bare model stays what the Trainer saves and evaluates; the wrappers share its parameters.
    """
    compile = getattr(args, "torch_compile", False) if compile is None else compile
    if compile:
        options = {k: getattr(args, f"torch_compile_{k}", None) for k in ("mode", "backend")}
        # for an nn.Module, torch.compile returns an OptimizedModule (typed as a plain callable)
        model = cast(torch.nn.Module, torch.compile(model, **{k: v for k, v in options.items() if v}))
    if not rt.distributed or rt.fsdp:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [rt.device.index] if rt.device.type == "cuda" else None
    ddp = {
        "find_unused_parameters": getattr(args, "ddp_find_unused_parameters", None),
        "bucket_cap_mb": getattr(args, "ddp_bucket_cap_mb", None),
        "broadcast_buffers": getattr(args, "ddp_broadcast_buffers", None),
        "static_graph": getattr(args, "ddp_static_graph", None),
    }
    return DistributedDataParallel(model, device_ids=ids, **{k: v for k, v in ddp.items() if v is not None})


def _repeated_blocks(model: torch.nn.Module) -> list:
    """The transformer blocks: members of the largest ModuleList whose items share one class."""
    best: list = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best):
            if len({type(m) for m in module}) == 1:
                best = list(module)
    return best


def shard_model(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    """FSDP2: shard parameters, gradients and optimizer state of each block, then the root (in place)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=rt.amp_dtype, reduce_dtype=torch.float32) if rt.amp_dtype else None
    kwargs: Dict[str, Any] = {"mp_policy": policy} if policy is not None else {}
    for block in _repeated_blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    rt.fsdp = True
    return model


def full_state_dicts(model: torch.nn.Module, optimizer: Any, rt: Runtime) -> tuple:
    """(model, optimizer) state dicts gathered in full on rank 0 under FSDP; (None, None) otherwise.

    Every rank must call this (it is a collective). Checkpoints therefore look the same whether they
    were saved from 1 process, DDP or FSDP, and `from_pretrained` loads them.
    """
    if not getattr(rt, "fsdp", False):
        return None, None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return msd, osd


def load_full_state_dicts(model: torch.nn.Module, optimizer: Any, model_sd: Any, optim_sd: Any, rt: Runtime) -> None:
    """Scatter full state dicts (read on every rank from the checkpoint) into an FSDP model and optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True)
    if model_sd is not None:
        set_model_state_dict(model, model_sd, options=opts)
    if optim_sd is not None:
        set_optimizer_state_dict(model, optimizer, optim_state_dict=optim_sd, options=opts)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's model inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers, in either order."""
    for _ in range(2):
        model = getattr(model, "module", model)
        model = getattr(model, "_orig_mod", model)
    return model
