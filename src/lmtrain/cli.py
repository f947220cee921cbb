"""`lmtrain` command line: train, prepare, eval, generate.

Every TrainingArguments field is a flag; `--config run.yaml` supplies the same fields from a file
(the command line wins). Errors a user can fix print one line and exit with status 2.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from .errors import LmtrainError

SAMPLE_NOTE = ("no --train_file given: training on the sample corpus shipped with lmtrain "
               "(Shakespeare's Sonnets, A Midsummer Night's Dream, A Lover's Complaint; public domain)")


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
    """Training text: .txt (a file is a document), .jsonl/.json, .csv, .gz of those, directories or globs."""
    validation_file: Optional[List[str]] = None
    """Validation text (default: a split of the training data)."""
    text_column: str = "text"
    """Column holding the text in .jsonl/.json/.csv files."""
    block_size: int = 128
    """Tokens per training sequence."""
    validation_split_percentage: float = 5.0
    """Percent of training blocks held out for validation when no validation_file is given."""
    cache_dir: Optional[str] = None
    """Where tokenized data is cached (default: ~/.cache/lmtrain)."""
    overwrite_cache: bool = False
    """Tokenize again even when a cache exists."""
    encoding_errors: str = "strict"
    """What to do with bytes that are not UTF-8: strict (stop with the file and offset) or replace."""
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


def _split_config(argv: Sequence[str]) -> tuple:
    """Pull `--config FILE` out of argv and load it (YAML or JSON)."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--config" or arg.startswith("--config="):
            path = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            del argv[i: i + (1 if "=" in arg else 2)]
            if not os.path.isfile(path):
                raise LmtrainError(f"--config {path!r}: no such file; check the path.")
            import yaml

            with open(path, encoding="utf-8") as f:
                try:
                    values = yaml.safe_load(f) or {}  # JSON is YAML too
                except yaml.YAMLError as e:
                    raise LmtrainError(f"{path} is not valid YAML/JSON ({' '.join(str(e).split())[:120]}).") from None
            if not isinstance(values, dict):
                raise LmtrainError(f"{path} must hold a mapping of option names to values.")
            return argv, values
    return argv, {}


def _parse(dataclass_types: list, argv: Sequence[str], prog: str, defaults: Optional[dict] = None) -> tuple:
    from .parser import HfArgumentParser

    parser = HfArgumentParser(dataclass_types, prog=prog)
    argv, from_file = _split_config(argv)
    return parser.parse_args_with_defaults(argv, {**(defaults or {}), **from_file})


def _default_output_dir() -> str:
    return os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))


def _say(msg: str) -> None:
    if int(os.environ.get("RANK", 0)) == 0:
        print(msg, flush=True)


def cmd_train(argv: Sequence[str]) -> int:
    from .args import TrainingArguments

    defaults = {**CLI_TRAINING_DEFAULTS, "output_dir": _default_output_dir()}
    model_args, data_args, train_args = _parse([ModelArguments, DataArguments, TrainingArguments], argv,
                                               "lmtrain train", defaults)
    out = train_args.output_dir
    created = not os.path.exists(out)
    try:
        return _train(model_args, data_args, train_args)
    except BaseException:
        # leave nothing half-written: a run that failed before its first checkpoint removes its folder
        from .training.checkpoint import list_checkpoints

        if created and os.path.isdir(out) and not list_checkpoints(out):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _tokenizer_for(model_args: ModelArguments, train_files: list, data_args: "DataArguments") -> Any:
    from .models import load_tokenizer

    source = model_args.tokenizer_name or model_args.model_name_or_path
    if source:
        tok = load_tokenizer(source, model_args.use_fast_tokenizer, model_args.model_revision)
    else:
        from .data.tokenize import train_bpe_tokenizer

        _say(f"training a byte-level BPE tokenizer (vocab {model_args.vocab_size}) on the training files")
        tok = train_bpe_tokenizer(train_files, vocab_size=model_args.vocab_size, text_column=data_args.text_column,
                                  encoding_errors=data_args.encoding_errors)
    if model_args.mlm and tok.mask_token is None:
        raise LmtrainError("the tokenizer has no mask token, which --mlm needs; use a tokenizer with one "
                           "(or leave out --tokenizer_name to train one).")
    return tok


def _train(model_args: ModelArguments, data_args: DataArguments, train_args: Any) -> int:
    from .data.collators import DataCollatorForLanguageModeling, default_data_collator
    from .data.pack import prepare_datasets
    from .data.readers import resolve_files, sample_corpus_files
    from .models import build_model, max_positions
    from .training.trainer import Trainer

    if data_args.train_file:
        train_files = resolve_files(data_args.train_file)
    else:
        _say(SAMPLE_NOTE)
        train_files = sample_corpus_files()
    validation_files = resolve_files(data_args.validation_file) if data_args.validation_file else None
    tokenizer = _tokenizer_for(model_args, train_files, data_args)
    model = build_model(tokenizer=tokenizer, mlm=model_args.mlm, block_size=data_args.block_size,
                        model_name_or_path=model_args.model_name_or_path, model_type=model_args.model_type,
                        config_name=model_args.config_name, config_overrides=model_args.config_overrides,
                        revision=model_args.model_revision, seed=train_args.seed)
    if model_args.lora_r > 0:
        from .models import apply_lora

        model = apply_lora(model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout,
                           model_args.lora_target_modules, model_args.mlm)
    train_ds, eval_ds, info = prepare_datasets(
        train_files, tokenizer, data_args.block_size, validation_files=validation_files, mlm=model_args.mlm,
        validation_split_percentage=data_args.validation_split_percentage, cache_dir=data_args.cache_dir,
        encoding_errors=data_args.encoding_errors, text_column=data_args.text_column,
        overwrite_cache=data_args.overwrite_cache, seed=train_args.seed, max_positions=max_positions(model),
    )
    _say(f"data: {info['train_tokens']:,} training tokens in {info['train_blocks']:,} blocks of "
         f"{data_args.block_size}" + (f"; {info['eval_blocks']:,} validation blocks" if eval_ds is not None else ""))
    if train_args.dataloader_num_workers > 0:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # tokenizing is done; forked workers must not use threads
    if eval_ds is None and train_args.eval_strategy != "no":
        train_args.eval_strategy = "no"
    collator = (DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=model_args.mlm_probability)
                if model_args.mlm else default_data_collator)
    from .training.reporting import LogLastStepCallback, SampleCallback

    callbacks: List[Any] = [LogLastStepCallback()]  # the run's last step is always in the log
    if model_args.eval_sample_prompt and not model_args.mlm:
        callbacks.append(SampleCallback(tokenizer, model_args.eval_sample_prompt))
    trainer = Trainer(model=model, args=train_args, train_dataset=train_ds, eval_dataset=eval_ds,
                      data_collator=collator, processing_class=tokenizer, callbacks=callbacks)
    trainer.refuse_existing_checkpoints = True  # a CLI run never silently mixes with an earlier one
    result = trainer.train(resume_from_checkpoint=True if data_args.resume else None)
    if trainer.interrupted:
        return 0  # stopped by SIGTERM/SIGINT after saving a checkpoint; the message said how to resume
    trainer.save_model()
    if model_args.lora_r > 0 and model_args.lora_merge:
        from .models import save_merged

        save_merged(trainer.model, tokenizer, os.path.join(train_args.output_dir, "merged"))
    trainer.save_metrics("train", result.metrics)
    metrics: Dict[str, float] = {}
    if eval_ds is not None:
        metrics = trainer.evaluate()
        trainer.save_metrics("eval", metrics)
    trainer.save_state()
    summary = f"saved the model and tokenizer to {train_args.output_dir}"
    if metrics:
        summary += f" (eval_loss {metrics['eval_loss']:.4f}, perplexity {metrics['eval_perplexity']:.2f})"
    _say(summary)
    return 0


@dataclass
class EvalArguments:
    model: str = field(default=None, metadata={"help": "A trained model directory (an lmtrain output_dir)."})
    file: List[str] = field(default=None, metadata={"help": "Text files to evaluate on."})
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

    from .args import TrainingArguments
    from .data.collators import DataCollatorForLanguageModeling, default_data_collator
    from .data.pack import prepare_datasets
    from .data.readers import resolve_files
    from .models import build_model, load_tokenizer, max_positions
    from .training.trainer import Trainer

    (a,) = _parse([EvalArguments], argv, "lmtrain eval")
    if not a.model or not a.file:
        raise LmtrainError("lmtrain eval needs --model DIR and --file F.")
    tokenizer = load_tokenizer(a.model)
    model = build_model(tokenizer=tokenizer, mlm=a.mlm, block_size=1, model_name_or_path=a.model)
    block = a.block_size or min(max_positions(model) or 1024, 1024)
    _, eval_ds, info = prepare_datasets(resolve_files(a.file), tokenizer, block, validation_files=resolve_files(a.file),
                                        mlm=a.mlm, cache_dir=a.cache_dir, text_column=a.text_column,
                                        max_positions=max_positions(model))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_eval_batch_size=a.batch_size, use_cpu=a.use_cpu,
                                 disable_tqdm=True)
        collator = DataCollatorForLanguageModeling(tokenizer, mlm=True) if a.mlm else default_data_collator
        trainer = Trainer(model=model, args=args, data_collator=collator, processing_class=tokenizer, callbacks=[])
        trainer.callback_handler.callbacks = []  # print only the result below
        metrics = trainer.evaluate(eval_ds)
    print(json.dumps({k: v for k, v in metrics.items() if k != "epoch"}, indent=2))
    return 0


@dataclass
class GenerateArguments:
    model: str = field(default=None, metadata={"help": "A trained causal LM directory."})
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

    from .models import build_model, load_tokenizer

    (a,) = _parse([GenerateArguments], argv, "lmtrain generate")
    if not a.model:
        raise LmtrainError("lmtrain generate needs --model DIR.")
    tokenizer = load_tokenizer(a.model)
    model = build_model(tokenizer=tokenizer, mlm=False, block_size=1, model_name_or_path=a.model).eval()
    torch.manual_seed(a.seed)
    ids = tokenizer(a.prompt or tokenizer.eos_token, return_tensors="pt", add_special_tokens=False)
    sample = a.temperature > 0
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=a.max_new_tokens, do_sample=sample,
                             temperature=a.temperature if sample else None, top_k=a.top_k if sample else None,
                             top_p=a.top_p if sample else None, num_return_sequences=a.num_return_sequences,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    for row in out:
        print(tokenizer.decode(row, skip_special_tokens=True))
        if a.num_return_sequences > 1:
            print("-" * 40)
    return 0


@dataclass
class PrepareArguments:
    tokenizer_name: Optional[str] = None
    """A local tokenizer directory (default: train a BPE tokenizer on the data)."""
    vocab_size: int = 8192
    """Vocabulary of the BPE tokenizer trained when no tokenizer is given."""
    mlm: bool = False
    """Prepare blocks for masked LM."""


def cmd_prepare(argv: Sequence[str]) -> int:
    from .data.pack import prepare_datasets
    from .data.readers import resolve_files, sample_corpus_files

    p, d = _parse([PrepareArguments, DataArguments], argv, "lmtrain prepare")
    files = resolve_files(d.train_file) if d.train_file else sample_corpus_files()
    margs = ModelArguments(tokenizer_name=p.tokenizer_name, vocab_size=p.vocab_size, mlm=p.mlm)
    tokenizer = _tokenizer_for(margs, files, d)
    start = time.perf_counter()
    _, _, info = prepare_datasets(files, tokenizer, d.block_size,
                                  validation_files=resolve_files(d.validation_file) if d.validation_file else None,
                                  mlm=p.mlm, validation_split_percentage=d.validation_split_percentage,
                                  cache_dir=d.cache_dir, text_column=d.text_column, encoding_errors=d.encoding_errors,
                                  overwrite_cache=d.overwrite_cache)
    print(f"documents: {info['train_documents']:,}\ntokens: {info['train_tokens']:,}\n"
          f"blocks: {info['train_blocks']:,} train, {info['eval_blocks']:,} validation (block_size {d.block_size})\n"
          f"cache: {', '.join(info['cache_dirs'])}\ntime: {time.perf_counter() - start:.2f}s")
    return 0


def cmd_report(argv: Sequence[str]) -> int:
    from .report import cmd_report as report

    return report(argv)


COMMANDS = {
    "train": (cmd_train, "train or fine-tune a model on text files"),
    "prepare": (cmd_prepare, "tokenize and pack text into the cache, and print its statistics"),
    "eval": (cmd_eval, "loss and perplexity of a trained model on a file"),
    "generate": (cmd_generate, "continue a prompt with a trained causal LM"),
    "report": (cmd_report, "plots and an HTML page of one or more runs (lmtrain report RUN [RUN ...])"),
}


def _usage() -> str:
    lines = ["usage: lmtrain COMMAND [options]   (lmtrain COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"lmtrain {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; use one of {', '.join(COMMANDS)}."
        print(f"error: unknown command {argv[0]!r}{hint}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    try:
        return COMMANDS[argv[0]][0](argv[1:])
    except LmtrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
