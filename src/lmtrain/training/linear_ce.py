"""Linear head + cross-entropy a chunk of tokens at a time: the (tokens x vocabulary) logits are never whole.

For GPT-2 124M at 16 x 1024 tokens the logits are 16384 x 50304: 1.5 GiB in bf16, 3.1 GiB upcast to float32,
and as much again for their gradients. Here one chunk's logits exist only while its loss and gradients are
computed, so the head costs chunk x vocabulary floats, whatever the batch.

Design (Liger-style): the forward computes the loss *and* the gradients for hidden, weight and bias, chunk by
chunk, keeping only those gradients (the size of hidden and of the weight); the backward scales them by the
incoming gradient. That is 3 matmuls per chunk, the FLOPs of the unfused head. Recomputing the logits in the
backward instead would add a 4th matmul (+33% head FLOPs) to save nothing at the backward's peak, where the
unfused head holds its weight gradient too.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..distributed import unwrap
from .loss import IGNORE_INDEX, output_logits

Grads = Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]


def _chunk_loss(
    h: Tensor, weight: Tensor, bias: Optional[Tensor], labels: Tensor, eps: float, ignore_index: int, want_grad: bool
) -> Tuple[Tensor, Optional[Tensor]]:
    """Loss sum of one chunk and, with want_grad, d(loss)/d(logits) in the logits' own buffer.

    Every vocabulary-wide step is in place on that one buffer (logsumexp would allocate a second one).
    """
    math_dtype = torch.promote_types(h.dtype, torch.float32)  # bf16 logits lose digits in a 50k-way softmax
    logits = (h @ weight.t()).to(math_dtype)
    if bias is not None:
        logits.add_(bias.to(math_dtype))
    valid = labels != ignore_index
    target = torch.where(valid, labels, 0).unsqueeze(1)  # any index in range: the row is masked anyway
    picked = logits.gather(1, target).squeeze(1)
    mean = logits.mean(dim=1) if eps else None
    peak = logits.amax(dim=1, keepdim=True)
    exp = logits.sub_(peak).exp_()  # the buffer now holds exp(logit - max)
    total = exp.sum(dim=1)
    lse = peak.squeeze(1) + total.log()
    loss = lse - picked
    if mean is not None:  # eps: F.cross_entropy's label smoothing, eps spread evenly over the vocabulary
        loss = (1.0 - eps) * loss + eps * (lse - mean)
    loss_sum = torch.where(valid, loss, 0.0).sum()
    if not want_grad:
        return loss_sum, None
    grad = exp.div_(total.unsqueeze(1))  # softmax
    grad.scatter_add_(1, target, torch.full_like(target, -(1.0 - eps), dtype=grad.dtype))
    if eps:
        grad.sub_(eps / grad.size(1))
    grad.masked_fill_(~valid.unsqueeze(1), 0.0)
    return loss_sum, grad


def _backprop_chunk(
    grad: Tensor, h: Tensor, weight: Tensor, grad_w: Optional[Tensor], grad_b: Optional[Tensor], need_h: bool
) -> Optional[Tensor]:
    """Add one chunk's weight/bias gradients into grad_w/grad_b; return its hidden gradient (if needed)."""
    if grad_b is not None:
        grad_b.add_(grad.sum(0))
    g = grad.to(h.dtype)  # the gradient matmuls run in the input dtype (bf16 tensor cores under autocast)
    if grad_w is not None:
        if g.dtype == grad_w.dtype:
            grad_w.addmm_(g.t(), h)
        else:
            grad_w.add_(g.t() @ h)
    return g @ weight if need_h else None


def _chunked(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    labels: Tensor,
    eps: float,
    chunk: int,
    ignore_index: int,
    need: Tuple[bool, bool, bool],
) -> Tuple[Tensor, Grads]:
    """Loss sum over all rows, and the gradients named by `need` (hidden, weight, bias)."""
    math_dtype = torch.promote_types(hidden.dtype, torch.float32)
    loss = torch.zeros((), dtype=math_dtype, device=hidden.device)
    grad_h = torch.empty_like(hidden) if need[0] else None
    # the weight/bias gradients sum over chunks: accumulate in float32, round to the weight's dtype once
    grad_w = torch.zeros(weight.shape, dtype=math_dtype, device=weight.device) if need[1] else None
    grad_b = torch.zeros(bias.shape, dtype=math_dtype, device=bias.device) if bias is not None and need[2] else None
    for start in range(0, hidden.size(0), chunk):  # static shapes: compile unrolls this loop
        h, y = hidden[start : start + chunk], labels[start : start + chunk]
        part, grad = _chunk_loss(h, weight, bias, y, eps, ignore_index, any(need))
        loss = loss + part
        if grad is not None:
            gh = _backprop_chunk(grad, h, weight, grad_w, grad_b, need[0])
            del grad  # freed before the next chunk's logits exist: one vocabulary-wide buffer at a time
            if gh is not None and grad_h is not None:  # gh is None unless need[0], and then grad_h is not
                grad_h[start : start + chunk] = gh
    grads = (
        grad_h,
        None if grad_w is None else grad_w.to(weight.dtype),
        None if grad_b is None or bias is None else grad_b.to(bias.dtype),
    )
    return loss.float(), grads


class _LinearCrossEntropySum(torch.autograd.Function):
    """Loss in the forward with the gradients precomputed; the backward only scales them."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Optional[Tensor],
        labels: Tensor,
        eps: float,
        chunk: int,
        ignore_index: int,
        need: Tuple[bool, bool, bool],
    ) -> Tensor:
        loss, grads = _chunked(hidden, weight, bias, labels, eps, chunk, ignore_index, need)
        ctx.save_for_backward(*grads)
        return loss

    @staticmethod
    @once_differentiable  # the stored gradients are constants: a second derivative would be silently wrong
    def backward(ctx: Any, grad_loss: Tensor) -> Tuple[Optional[Tensor], ...]:
        # out of place, so that a retain_graph=True second backward scales the unscaled gradients again
        grads = tuple(None if g is None else g * grad_loss.to(g.dtype) for g in ctx.saved_tensors)
        return grads + (None,) * 5


def linear_cross_entropy_sum(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    bias: Optional[Tensor] = None,
    label_smoothing: float = 0.0,
    chunk_size: int = 4096,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """Sum over rows of `F.cross_entropy(hidden @ weight.T + bias, labels, label_smoothing=...)`, float32.

    hidden (N, H), weight (V, H), bias (V,) or None, labels (N,) with `ignore_index` rows left out. Under
    autocast the matmuls run in the autocast dtype, as `F.linear` would; the softmax is float32 (float64 for
    float64 inputs) whatever the input dtype. Gradients are computed only for inputs that require them.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(
            f"expected hidden (N, H), weight (V, H), labels (N,); got {tuple(hidden.shape)}, "
            f"{tuple(weight.shape)}, {tuple(labels.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    device = hidden.device.type
    if torch.is_autocast_enabled(device):  # cast as F.linear would; the cast's backward reaches fp32 weights
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    labels = labels.to(hidden.device)
    grad_on = torch.is_grad_enabled()
    need = (
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    with torch.autocast(device, enabled=False):  # the casts above are the only ones
        if not any(need):  # evaluation: the loss alone, no gradient computed or held
            return _chunked(hidden, weight, bias, labels, label_smoothing, chunk_size, ignore_index, need)[0]
        return _LinearCrossEntropySum.apply(
            hidden, weight, bias, labels, label_smoothing, chunk_size, ignore_index, need
        )


# ---- model level -------------------------------------------------------------------------------------------

_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForMaskedLM")
# config fields of transformers models that cap or rescale the logits *after* the head (Gemma 2/3, Cohere,
# Granite, Falcon-H1): the full-logits path applies them, a fused head would not
_SOFTCAPS = ("final_logit_softcapping",)
_SCALES = ("logit_scale", "logits_scaling", "lm_head_multiplier")
_SKIP = nn.Identity()  # what stands in for the head: the model then returns the head's input as its "logits"
# per model: (head, parent, attribute, None or why the fused head does not apply), from one probe
_VERDICTS: "weakref.WeakKeyDictionary[nn.Module, Tuple[nn.Module, nn.Module, str, Optional[str]]]" = (
    weakref.WeakKeyDictionary()
)


@contextlib.contextmanager
def _head_skipped(parent: nn.Module, name: str, head: nn.Module) -> Iterator[None]:
    setattr(parent, name, _SKIP)
    try:
        yield
    finally:
        setattr(parent, name, head)


def _static_reason(model: nn.Module, inner: nn.Module, head: Any) -> Optional[str]:
    """Why the fused head cannot apply, from the model's structure alone (None: probe it)."""
    if not type(inner).__name__.endswith(_LM_SUFFIXES):
        return "not a causal or masked LM"
    if type(head) is not nn.Linear:  # a subclass (quantised, LoRA) may compute something else
        return f"its head is a {type(head).__name__}, not a plain nn.Linear"
    if head._forward_hooks or head._forward_pre_hooks:
        return "its head has hooks, which skipping it would bypass"
    if any(hasattr(p, "full_tensor") for p in head.parameters()):  # an FSDP2 DTensor
        return "the head is sharded (FSDP): its weight is not whole on this rank"
    if getattr(model, "find_unused_parameters", False) or getattr(model, "static_graph", False):
        # DDP would mark an untied head weight unused (it is not reached from the outputs) and then see its gradient
        return "DDP with find_unused_parameters or static_graph"
    config = getattr(inner, "config", None)
    if any(getattr(config, k, None) is not None for k in _SOFTCAPS) or any(
        getattr(config, k, None) not in (None, 1, 1.0) for k in _SCALES
    ):
        return "its config caps or scales the logits after the head"
    return None


def _tiny_batch(inputs: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The first row's first 8 positions of every (batch, length, ...) tensor; None if another tensor is there."""
    ref = inputs.get("input_ids", inputs.get("inputs_embeds"))
    if not isinstance(ref, Tensor) or ref.dim() < 2:
        return None
    out = {}
    for k, v in inputs.items():
        if isinstance(v, Tensor):
            if v.dim() < 2 or v.shape[:2] != ref.shape[:2]:
                return None
            v = v[:1, :8]
        out[k] = v
    return out


def _same(a: Tensor, b: Tensor) -> bool:
    return isinstance(a, Tensor) and a.shape == b.shape and torch.equal(a.to(b.dtype), b)


def _probe(inner: nn.Module, parent: nn.Module, name: str, head: nn.Module, tiny: Dict[str, Any]) -> Optional[str]:
    """Prove on a few tokens, in eval mode (no dropout), that the model's logits are exactly its head's output
    and that skipping the head returns exactly the head's input; None when both hold, else why not."""
    seen: Dict[str, Tensor] = {}
    handle = head.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            logits = output_logits(inner(**tiny))
            handle.remove()
            with _head_skipped(parent, name, head):
                hidden = output_logits(inner(**tiny))
    except Exception as exc:  # e.g. a forward that reads the head's weight itself
        return f"its forward fails with the head skipped ({type(exc).__name__}: {exc})"
    finally:
        handle.remove()
        inner.train(training)
    if "y" not in seen or not _same(logits, seen["y"]):
        return "its logits are not exactly its head's output"
    if not _same(hidden, seen["x"]):
        return "skipping its head does not return the head's input"
    return None


def _fused_head(model: nn.Module, inputs: Mapping[str, Any]) -> Optional[Tuple[nn.Module, nn.Module, str]]:
    """(head, its parent, attribute name) when the fused loss equals the model's own head + loss, else None."""
    inner = unwrap(model)
    hf: Any = inner  # nn.Module's stubs type its transformers methods as Tensor | Module
    head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if _static_reason(model, inner, head) is not None:
        return None
    assert isinstance(head, nn.Linear)  # _static_reason checked that its type is exactly nn.Linear
    known = _VERDICTS.get(inner)
    if known is None or known[0] is not head:
        where = next((n for n, m in inner.named_modules() if m is head), None)
        tiny = _tiny_batch(inputs)
        if where is None or tiny is None:
            return None  # a batch of other shapes: decided again on the next one
        parent_name, _, attr = where.rpartition(".")
        parent = inner.get_submodule(parent_name)
        known = (head, parent, attr, _probe(inner, parent, attr, head, tiny))
        _VERDICTS[inner] = known
        reason = known[3]
        if reason:
            warnings.warn(f"loss_chunk_size: {type(inner).__name__} uses its full logits: {reason}.", stacklevel=3)
    return None if known[3] else known[:3]


def fusion_status(model: nn.Module) -> str:
    """ "fused", "not probed yet", or why the model uses its full logits (for logs and benchmarks)."""
    known = _VERDICTS.get(unwrap(model))
    return "not probed yet" if known is None else known[3] or "fused"


def lm_loss_sum_fused(
    model: nn.Module,
    inputs: Mapping[str, Any],
    labels: Tensor,
    shift: int,
    label_smoothing: float = 0.0,
    chunk_size: int = 4096,
    loss_fn: Any = linear_cross_entropy_sum,
) -> Optional[Tuple[Tensor, Any]]:
    """(sum of token losses, model outputs) with the head fused into the loss; None: use the full logits.

    The model is called as given (compiled, DDP-wrapped) with its head swapped for an identity, so its
    "logits" are the head's input: whatever sits before the head (a BERT prediction transform, a scaling)
    stays in the compiled graph. Applies to causal/masked LMs with a plain `nn.Linear` head, once a probe on
    a few tokens proved the swap exact (nothing after the head). Labels are shifted like `token_loss_sum`.
    The returned outputs' `logits` hold those hidden states, not logits.
    """
    # labels in the inputs would make the model compute a loss on the head's input, as if it were logits
    inputs = {k: v for k, v in inputs.items() if k != "labels"}
    ref = inputs.get("input_ids", inputs.get("inputs_embeds"))
    if not isinstance(ref, Tensor) or labels.shape != ref.shape[:2]:
        return None  # not token labels (e.g. classification labels under label smoothing)
    found = _fused_head(model, inputs)
    if found is None:
        return None
    head, parent, name = found
    with _head_skipped(parent, name, head):
        outputs = model(**inputs)
    hidden = output_logits(outputs)
    labels = labels.to(hidden.device)
    if shift:  # pad the labels, never slice the hidden states (a copy of the step's largest activation)
        labels = F.pad(labels[..., shift:], (0, shift), value=IGNORE_INDEX)
    loss = loss_fn(
        hidden.reshape(-1, hidden.size(-1)), head.weight, labels.reshape(-1), head.bias, label_smoothing, chunk_size
    )
    return loss, outputs
