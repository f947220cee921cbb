"""The arguments of the `lmtrain train` recipe besides TrainingArguments, and the recipe's own defaults.

They live here, not in the CLI, so that the report (which shows the arguments that differ from these
defaults) and Python callers of :func:`lmtrain.cli.train.train` import them without the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional


@dataclass
class ModelArguments:
    """Which model and tokenizer to train."""

    model_name_or_path: Optional[str] = None
    """A local pretrained model directory (saved with save_pretrained) to fine-tune."""
    model_type: Optional[str] = None
    """Model type to train from scratch when no model is given: gpt2 (default), llama, bert (default with --mlm), ..."""
    config_overrides: Optional[str] = None
    """Config fields for a model trained from scratch, e.g. n_layer=4,n_embd=256."""
    config_name: Optional[str] = None
    """A local config directory to build the from-scratch model from."""
    tokenizer_name: Optional[str] = None
    """A local tokenizer directory (default: the model's, or a new BPE tokenizer trained on the data)."""
    use_fast_tokenizer: bool = True
    """Use the Rust-backed fast tokenizer."""
    model_revision: str = "main"
    """Accepted for compatibility with run_clm.py (only local models are used)."""
    vocab_size: int = 8192
    """Vocabulary size of the BPE tokenizer trained when neither model nor tokenizer is given."""
    mlm: bool = False
    """Train a masked language model (BERT-style) instead of a causal one."""
    mlm_probability: float = 0.15
    """Fraction of tokens masked for masked LM."""
    lora_r: int = 0
    """Rank of LoRA adapters to fine-tune instead of all weights (0: off; needs peft)."""
    lora_alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA path."""
    lora_target_modules: Optional[str] = None
    """Comma-separated module names to adapt (default: peft's choice for the model type, e.g. c_attn for GPT-2)."""
    lora_merge: bool = False
    """Also save the adapters merged into the base weights, in output_dir/merged."""
    eval_sample_prompt: Optional[str] = None
    """Print a short generation from this prompt after each evaluation (causal LM)."""


@dataclass
class DataArguments:
    """Which text to train on and how to cut it."""

    train_file: Optional[List[str]] = None
    """Training text: .txt (a file is a document), .jsonl/.json, .csv, each also as .gz/.zst/.bz2/.xz, .parquet;
    files, directories or globs of shards. Entries path:weight (web/:0.7 'books/*.txt:0.3') mix those sources
    by weight, one token cache and one logged token count (tokens_<path>) each."""
    mix_exhausted: str = "repeat"
    """With weighted --train_file sources, what a source that runs out does: repeat (it starts over in a new
    order; the epoch is as long as all sources together) or end (the epoch ends when the first source runs out)."""
    validation_file: Optional[List[str]] = None
    """Validation text (default: a split of the training data)."""
    text_column: str = "text"
    """Column holding the text in .jsonl/.json/.csv files."""
    block_size: int = 128
    """Tokens per training sequence."""
    packing: str = "concat"
    """How blocks are cut: concat (the documents one after another, each ended by EOS, cut into consecutive
    blocks; the remainder is dropped) or bos_aligned (every block starts at a document start, with BOS: documents
    are packed best-fit and, when none fits the space left, one is cropped, so nothing is padded and documents
    longer than a block lose their tail). The tokens dropped and padded are reported."""
    validation_split_percentage: float = 5.0
    """Percent of training blocks held out for validation when no validation_file is given."""
    cache_dir: Optional[str] = None
    """Where tokenized data is cached (default: ~/.cache/lmtrain)."""
    overwrite_cache: bool = False
    """Tokenize again even when a cache exists."""
    encoding_errors: str = "strict"
    """What to do with bytes that are not UTF-8: strict (stop with the file and offset) or replace."""
    streaming: bool = False
    """Tokenize while training instead of first: documents are read, encoded and packed in the data-loader
    workers (training starts in seconds on any corpus size), the token cache is written on the way so the
    next run starts warm, and a checkpoint stores each reader's place so --resume replays nothing. Needs
    --max_steps. Resume with the same --dataloader_num_workers and number of ranks."""
    resume: bool = False
    """Resume from the latest complete checkpoint in output_dir."""
    config: Optional[str] = None
    """A YAML or JSON file with any of these options (the command line wins)."""


# Defaults of `lmtrain train` that differ from the library's (which follow transformers).
CLI_TRAINING_DEFAULTS: Dict[str, Any] = {
    "learning_rate": 5e-4,
    "weight_decay": 0.01,
    "warmup_ratio": 0.05,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 16,
    "num_train_epochs": 3.0,
    "logging_steps": 10,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
}
