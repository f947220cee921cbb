"""Models and tokenizers: load a local pretrained one, or build a small one from a config.

Everything is local: a name that is not a directory on disk gets one clear error (lmtrain runs offline).
"""

from __future__ import annotations

import ast
import os
from typing import Any, Dict, Optional

from .errors import ConfigError

# What "a small model" means when training from scratch with no --config_overrides.
SMALL_CONFIGS: Dict[str, Dict[str, Any]] = {
    "gpt2": {"n_layer": 4, "n_embd": 256, "n_head": 4},
    "llama": {
        "num_hidden_layers": 4,
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
    },
    "bert": {"num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4},
    "roberta": {"num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4},
}
_POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len", "seq_length")


def local_dir(path: str, what: str) -> str:
    """`path` when it is a folder; else one line naming `what` it should be (model, tokenizer, config)."""
    if not os.path.isdir(path):
        raise ConfigError(
            f"{what} {path!r} is not a local directory; lmtrain works offline, so pass a folder saved with "
            f"save_pretrained (or leave it out to train from scratch)."
        )
    return path


def parse_overrides(text: Optional[str]) -> Dict[str, Any]:
    """'n_layer=4,n_embd=256,activation=gelu' -> {'n_layer': 4, 'n_embd': 256, 'activation': 'gelu'}."""
    out: Dict[str, Any] = {}
    if not text:
        return out
    for item in text.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ConfigError(f"--config_overrides item {item!r} is not key=value; write e.g. n_layer=4,n_embd=256.")
        key, value = (s.strip() for s in item.split("=", 1))
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = {"true": True, "false": False, "none": None}.get(value.lower(), value)
    return out


def load_tokenizer(name_or_path: str, use_fast: bool = True, revision: str = "main") -> Any:
    from transformers import AutoTokenizer

    local_dir(name_or_path, "tokenizer")
    return AutoTokenizer.from_pretrained(name_or_path, use_fast=use_fast, revision=revision)


def build_config(
    model_type: str, tokenizer: Any, block_size: int, overrides: Dict[str, Any], config_name: Optional[str] = None
) -> Any:
    """A config for training from scratch, sized to the tokenizer and long enough for block_size."""
    from transformers import CONFIG_MAPPING, AutoConfig

    if config_name:
        config = AutoConfig.from_pretrained(local_dir(config_name, "config"))
    else:
        if model_type not in CONFIG_MAPPING:
            close = [t for t in CONFIG_MAPPING.keys() if t.startswith(model_type[:3])][:5]
            raise ConfigError(
                f"--model_type {model_type!r} is not a transformers model type; try "
                f"{', '.join(close) or 'gpt2, llama, bert'}."
            )
        config = CONFIG_MAPPING[model_type](**SMALL_CONFIGS.get(model_type, {}))
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ConfigError(f"--config_overrides: {type(config).__name__} has no field {key!r}.")
        setattr(config, key, value)
    config.vocab_size = len(tokenizer)
    user_set_positions = any(key in overrides for key in _POSITION_KEYS)
    for key in _POSITION_KEYS:
        if user_set_positions:
            break  # the user chose the length; a block longer than it is reported by the data step
        if getattr(config, key, None) is not None and getattr(config, key) < block_size:
            setattr(config, key, block_size)
    for name in ("bos", "eos", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            setattr(config, f"{name}_token_id", token_id)
    return config


def build_model(
    *,
    tokenizer: Any,
    mlm: bool,
    block_size: int,
    model_name_or_path: Optional[str] = None,
    model_type: Optional[str] = None,
    config_name: Optional[str] = None,
    config_overrides: Optional[str] = None,
    revision: str = "main",
    seed: int = 42,
) -> Any:
    """Load `model_name_or_path`, or build `model_type` (gpt2 for CLM, bert for MLM) from scratch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForMaskedLM if mlm else AutoModelForCausalLM
    if model_name_or_path:
        if config_overrides:
            raise ConfigError(
                "--config_overrides only applies when training from scratch; drop it or drop --model_name_or_path."
            )
        try:
            model = auto.from_pretrained(local_dir(model_name_or_path, "model"), revision=revision)
        except ValueError as e:
            kind = "masked" if mlm else "causal"
            raise ConfigError(
                f"{model_name_or_path} cannot be loaded as a {kind} LM ({str(e).splitlines()[0]}); "
                f"{'drop' if mlm else 'add'} --mlm or pick another model."
            ) from e
        embeddings: Any = model.get_input_embeddings()  # an nn.Embedding, typed nn.Module by transformers
        vocab = embeddings.num_embeddings
        if len(tokenizer) > vocab:
            model.resize_token_embeddings(len(tokenizer))
        return model
    config = build_config(
        model_type or ("bert" if mlm else "gpt2"), tokenizer, block_size, parse_overrides(config_overrides), config_name
    )
    torch.manual_seed(seed)
    try:
        try:  # PyTorch's fused attention kernels; models without them fall back to the default
            return auto.from_config(config, attn_implementation="sdpa")
        except (ValueError, ImportError, TypeError):
            torch.manual_seed(seed)
            return auto.from_config(config)
    except ValueError as e:
        raise ConfigError(
            f"--model_type {config.model_type} has no {'masked' if mlm else 'causal'} LM head "
            f"({str(e).splitlines()[0]})."
        ) from e


def max_positions(model: Any) -> Optional[int]:
    """The longest sequence the model's position embeddings allow (None when unbounded, e.g. rotary)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if getattr(config, "model_type", "") in ("llama", "mistral", "qwen2", "gemma"):
        return None  # rotary positions: the configured length is a hint, not a hard limit
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            # RoBERTa-style models reserve padding_idx+1 positions
            offset = (
                (config.pad_token_id + 1)
                if getattr(config, "model_type", "") in ("roberta", "xlm-roberta") and config.pad_token_id is not None
                else 0
            )
            return value - offset
    return None


def apply_lora(model: Any, r: int, alpha: int, dropout: float, target_modules: Optional[str], mlm: bool) -> Any:
    """Wrap `model` with LoRA adapters (peft): only the adapters train; the base weights stay frozen."""
    try:
        from peft import LoraConfig, TaskType, get_peft_model
    except ImportError:
        raise ConfigError(
            "--lora_r needs the peft package: pip install peft (or pip install 'lmtrain[lora]')."
        ) from None
    targets = [t.strip() for t in target_modules.split(",") if t.strip()] if target_modules else None
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        task_type=None if mlm else TaskType.CAUSAL_LM,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise ConfigError(
            f"LoRA could not be applied ({str(e).splitlines()[0]}); pass --lora_target_modules "
            f"with names of this model's linear layers."
        ) from e


def save_merged(model: Any, tokenizer: Any, out_dir: str) -> None:
    """Fold LoRA adapters into the base weights and save a plain model `from_pretrained` loads."""
    merged = model.merge_and_unload()
    merged.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
