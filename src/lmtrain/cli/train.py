"""`lmtrain train`: the recipe that goes from text files to a saved model, callable from Python too.

    from lmtrain import TrainingArguments
    from lmtrain.cli.train import train
    from lmtrain.recipe_args import DataArguments, ModelArguments

    train(ModelArguments(model_type="gpt2"), DataArguments(train_file=["my_text/"]),
          TrainingArguments(output_dir="runs/mine", max_steps=200))

`train` uses the arguments as given; `cmd_train(argv)` (the command) first applies the command line's
own defaults (:data:`lmtrain.recipe_args.CLI_TRAINING_DEFAULTS`) and a `--config` file.
"""

from __future__ import annotations

import os
import shlex
import shutil
from typing import Any, Dict, List, Sequence

from ..errors import ConfigError
from ..recipe_args import CLI_TRAINING_DEFAULTS, DataArguments, ModelArguments
from .common import check_model_dir, check_output_dir, default_output_dir, parse, say, tokenizer_for

SAMPLE_NOTE = (
    "no --train_file given: training on the sample corpus shipped with lmtrain "
    "(Shakespeare's Sonnets, A Midsummer Night's Dream, A Lover's Complaint; public domain)"
)
SAMPLE_PROMPT = "Shall I compare thee"
"""The prompt of the sample printed at the end of a run on the packaged corpus (Sonnet 18)."""


def cmd_train(argv: Sequence[str]) -> int:
    """`lmtrain train [options]`: parse argv (over the CLI's defaults and --config) and run :func:`train`."""
    from ..args import TrainingArguments

    defaults = {**CLI_TRAINING_DEFAULTS, "output_dir": default_output_dir()}
    model_args, data_args, train_args = parse(
        [ModelArguments, DataArguments, TrainingArguments], argv, "lmtrain train", defaults
    )
    return train(model_args, data_args, train_args)


def train(model_args: ModelArguments, data_args: DataArguments, train_args: Any) -> int:
    """Tokenize, pack, train, evaluate and save into train_args.output_dir; 0 when done (or stopped by a signal
    after saving a checkpoint). A run that fails before its first checkpoint leaves no output folder behind;
    errors the user can fix are raised as LmtrainError (one line naming the fix)."""
    out = train_args.output_dir
    check_output_dir(out)
    created = not os.path.exists(out)
    try:
        return _train(model_args, data_args, train_args)
    except BaseException:
        # leave nothing half-written: a run that failed before its first checkpoint removes its folder
        from ..training.checkpoint import list_checkpoints

        if created and os.path.isdir(out) and not list_checkpoints(out):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _train(model_args: ModelArguments, data_args: DataArguments, train_args: Any) -> int:
    from ..data.collators import DataCollatorForLanguageModeling, default_data_collator
    from ..data.mixture import check_exhausted, describe_mixture, parse_sources, prepare_mixture
    from ..data.pack import prepare_datasets
    from ..data.packing import check_packing, describe_packing
    from ..data.readers import resolve_files, sample_corpus_files
    from ..models import build_model, max_positions
    from ..training.trainer import Trainer

    check_model_dir(model_args.model_name_or_path)  # before its tokenizer, whose error would name the tokenizer
    check_packing(data_args.packing)  # before tokenizing
    sample_run = not data_args.train_file
    sources = parse_sources(data_args.train_file) if data_args.train_file else None  # path:weight entries
    if sources:
        check_exhausted(data_args.mix_exhausted)  # before tokenizing
        source_files = [resolve_files([source.path]) for source in sources]
        train_files = [f for files in source_files for f in files]
    elif data_args.train_file:
        train_files = resolve_files(data_args.train_file)
    else:
        say(SAMPLE_NOTE)
        train_files = sample_corpus_files()
    validation_files = resolve_files(data_args.validation_file) if data_args.validation_file else None
    tokenizer = tokenizer_for(model_args, train_files, data_args)
    model = build_model(
        tokenizer=tokenizer,
        mlm=model_args.mlm,
        block_size=data_args.block_size,
        model_name_or_path=model_args.model_name_or_path,
        model_type=model_args.model_type,
        config_name=model_args.config_name,
        config_overrides=model_args.config_overrides,
        revision=model_args.model_revision,
        seed=train_args.seed,
    )
    if model_args.lora_r > 0:
        from ..models import apply_lora

        model = apply_lora(
            model,
            model_args.lora_r,
            model_args.lora_alpha,
            model_args.lora_dropout,
            model_args.lora_target_modules,
            model_args.mlm,
        )
    train_ds: Any
    data_opts: Dict[str, Any] = dict(
        validation_files=validation_files,
        mlm=model_args.mlm,
        validation_split_percentage=data_args.validation_split_percentage,
        cache_dir=data_args.cache_dir,
        encoding_errors=data_args.encoding_errors,
        text_column=data_args.text_column,
        overwrite_cache=data_args.overwrite_cache,
        seed=train_args.seed,
        max_positions=max_positions(model),
        packing=data_args.packing,
    )
    file_lists = source_files if sources else [train_files]  # one list per source
    streaming = data_args.streaming and not _warm_cache(data_args, file_lists, tokenizer)
    if streaming:  # tokenized while training: the first step comes in seconds
        if train_args.max_steps <= 0:
            raise ConfigError("--streaming needs --max_steps N (a stream has no length to make epochs of)")
        from ..data.streaming import describe_streaming, prepare_streaming

        train_ds, eval_ds, info = prepare_streaming(
            file_lists,
            tokenizer,
            data_args.block_size,
            weights=[s.weight for s in sources] if sources else None,
            names=[s.name for s in sources] if sources else None,
            validation_files=validation_files,
            mlm=model_args.mlm,
            cache_dir=data_args.cache_dir,
            text_column=data_args.text_column,
            encoding_errors=data_args.encoding_errors,
            seed=train_args.data_seed if train_args.data_seed is not None else train_args.seed,
            max_positions=max_positions(model),
            packing=data_args.packing,
            overwrite_cache=data_args.overwrite_cache,
        )
        say(describe_streaming(info, data_args.block_size))
    elif sources:  # one token cache per source, mixed by weight
        data_seed = train_args.data_seed if train_args.data_seed is not None else train_args.seed
        train_ds, eval_ds, info = prepare_mixture(
            sources, tokenizer, data_args.block_size, mix_seed=data_seed, exhausted=data_args.mix_exhausted, **data_opts
        )
        say(describe_mixture(train_ds, info, data_args.block_size))
    else:
        train_ds, eval_ds, info = prepare_datasets(train_files, tokenizer, data_args.block_size, **data_opts)
        say(
            f"data: {info['train_tokens']:,} training tokens in {info['train_blocks']:,} blocks of "
            f"{data_args.block_size}"
            + (f"; {info['eval_blocks']:,} validation blocks" if eval_ds is not None else "")
            + f"; {describe_packing(info)}"
        )
    if train_args.dataloader_num_workers > 0:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # tokenizing is done; forked workers must not use threads
    if eval_ds is None and train_args.eval_strategy != "no":
        train_args.eval_strategy = "no"
    collator = (
        DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=model_args.mlm_probability)
        if model_args.mlm
        else default_data_collator
    )
    from ..training.reporting import LogLastStepCallback, SampleCallback

    callbacks: List[Any] = [LogLastStepCallback()]  # the run's last step is always in the log
    sampler = None
    if model_args.eval_sample_prompt and not model_args.mlm:
        sampler = SampleCallback(tokenizer, model_args.eval_sample_prompt)
        callbacks.append(sampler)
    trainer = Trainer(
        model=model,
        args=train_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.refuse_existing_checkpoints = True  # a CLI run never silently mixes with an earlier one
    if sources or (streaming and data_args.packing == "bos_aligned"):  # tokens_<source> (and dropped) in the logs
        from ..training.sources import SourceTokensCallback, StreamTokensCallback

        counter = StreamTokensCallback if streaming else SourceTokensCallback
        counter(train_ds).attach(trainer)
    result = trainer.train(resume_from_checkpoint=True if data_args.resume else None)
    if trainer.interrupted:
        return 0  # stopped by SIGTERM/SIGINT after saving a checkpoint; the message said how to resume
    trainer.save_model()
    if model_args.lora_r > 0 and model_args.lora_merge:
        from ..models import save_merged

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
    say(summary)
    if trainer.is_world_process_zero():
        step = trainer.state.global_step
        if sample_run and not model_args.mlm and (sampler is None or sampler.last_step != step):
            # the packaged-corpus run ends with what the model writes (unless the last evaluation just showed it)
            (sampler or SampleCallback(tokenizer, SAMPLE_PROMPT)).show(trainer.model, step, train_args.seed)
        say(next_steps(train_args.output_dir, model_args, sample_run))
    return 0


def _warm_cache(data_args: DataArguments, file_lists: List[List[Any]], tokenizer: Any) -> bool:
    """--streaming over files whose token caches are complete reads the caches (said in one line), unless it
    resumes a streamed run: its checkpoint holds stream positions."""
    if data_args.resume or data_args.overwrite_cache:
        return False
    from ..data.streaming import cached_already

    if not cached_already(file_lists, tokenizer, data_args.cache_dir, data_args.text_column, data_args.encoding_errors):
        return False
    say("--streaming: the token cache of these files is complete, so training reads it instead")
    return True


def next_steps(output_dir: str, model_args: ModelArguments, sample_run: bool = False) -> str:
    """The line that tells the user what to run on the model just saved."""
    model_dir = os.path.join(output_dir, "merged") if model_args.lora_r > 0 and model_args.lora_merge else output_dir
    report = f"lmtrain report {shlex.quote(output_dir)} (plots and an HTML page)"
    if model_args.mlm:
        return f"next: {report}, or lmtrain eval --mlm --model {shlex.quote(model_dir)} --file YOUR_TEXT"
    prompt = model_args.eval_sample_prompt or (SAMPLE_PROMPT if sample_run else "your text")
    return f"next: lmtrain generate --model {shlex.quote(model_dir)} --prompt {shlex.quote(prompt)}, or {report}"
