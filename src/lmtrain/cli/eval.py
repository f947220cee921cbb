"""`lmtrain eval`: loss, perplexity and bits per byte of a trained model on text files (printed as JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from ..errors import LmtrainError
from .common import check_model_dir, parse, quiet_model_loading


@dataclass
class EvalArguments:
    model: Optional[str] = field(default=None, metadata={"help": "A trained model directory (an lmtrain output_dir)."})
    file: Optional[List[str]] = field(default=None, metadata={"help": "Text files to evaluate on."})
    block_size: Optional[int] = None
    """Tokens per sequence (default: the model's positions, at most 1024)."""
    batch_size: int = 8
    """Sequences per batch."""
    text_column: str = "text"
    """Column holding the text in .jsonl/.json/.csv files."""
    mlm: bool = False
    """Evaluate as a masked LM."""
    cache_dir: Optional[str] = None
    """Where tokenized data is cached."""
    use_cpu: bool = False
    """Stay on the CPU."""


def cmd_eval(argv: Sequence[str]) -> int:
    import json
    import tempfile

    from ..args import TrainingArguments
    from ..data.collators import DataCollatorForLanguageModeling, default_data_collator
    from ..data.pack import prepare_datasets
    from ..data.readers import resolve_files
    from ..models import build_model, load_tokenizer, max_positions
    from ..training.trainer import Trainer

    (a,) = parse([EvalArguments], argv, "lmtrain eval")
    if not a.model or not a.file:
        raise LmtrainError("lmtrain eval needs --model DIR and --file F.")
    check_model_dir(a.model)
    tokenizer = load_tokenizer(a.model)
    with quiet_model_loading():
        model = build_model(tokenizer=tokenizer, mlm=a.mlm, block_size=1, model_name_or_path=a.model)
    block = a.block_size or min(max_positions(model) or 1024, 1024)
    _, eval_ds, info = prepare_datasets(
        resolve_files(a.file),
        tokenizer,
        block,
        validation_files=resolve_files(a.file),
        mlm=a.mlm,
        cache_dir=a.cache_dir,
        text_column=a.text_column,
        max_positions=max_positions(model),
    )
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, per_device_eval_batch_size=a.batch_size, use_cpu=a.use_cpu, disable_tqdm=True
        )
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=True) if a.mlm else default_data_collator
        trainer = Trainer(model=model, args=args, data_collator=collator, processing_class=tokenizer, callbacks=[])
        trainer.callback_handler.callbacks = []  # print only the result below
        metrics = trainer.evaluate(eval_ds)
    print(json.dumps({k: v for k, v in metrics.items() if k != "epoch"}, indent=2))
    return 0
