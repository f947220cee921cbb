"""`lmtrain generate`: continue a prompt with a trained causal LM."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..errors import LmtrainError
from .common import check_model_dir, parse, quiet_model_loading


@dataclass
class GenerateArguments:
    model: Optional[str] = field(default=None, metadata={"help": "A trained causal LM directory."})
    prompt: str = ""
    """Text to continue."""
    max_new_tokens: int = 50
    """Tokens to generate."""
    temperature: float = 0.8
    """Sampling temperature (0: greedy)."""
    top_k: int = 50
    """Sample among the k most likely tokens (0: all)."""
    top_p: float = 0.95
    """Nucleus sampling threshold."""
    seed: int = 42
    """Random seed for sampling."""
    num_return_sequences: int = 1
    """Samples to print."""


def cmd_generate(argv: Sequence[str]) -> int:
    import torch

    from ..models import build_model, load_tokenizer

    (a,) = parse([GenerateArguments], argv, "lmtrain generate")
    if not a.model:
        raise LmtrainError("lmtrain generate needs --model DIR.")
    check_model_dir(a.model)
    tokenizer = load_tokenizer(a.model)
    with quiet_model_loading():
        model = build_model(tokenizer=tokenizer, mlm=False, block_size=1, model_name_or_path=a.model).eval()
    torch.manual_seed(a.seed)
    ids = tokenizer(a.prompt or tokenizer.eos_token, return_tensors="pt", add_special_tokens=False)
    sample = a.temperature > 0
    with torch.no_grad():
        out = model.generate(
            **ids,
            max_new_tokens=a.max_new_tokens,
            do_sample=sample,
            temperature=a.temperature if sample else None,
            top_k=a.top_k if sample else None,
            top_p=a.top_p if sample else None,
            num_return_sequences=a.num_return_sequences,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    for row in out:
        print(tokenizer.decode(row, skip_special_tokens=True))
        if a.num_return_sequences > 1:
            print("-" * 40)
    return 0
