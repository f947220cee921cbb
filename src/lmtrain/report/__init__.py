"""`lmtrain report RUN_DIR [RUN_DIR ...]`: plots and a self-contained HTML page of training runs.

One run directory (the ``--output_dir`` of ``lmtrain train``) gives its curves; several are overlaid,
one colour per run, labelled by the directory name. What is written to ``--out`` (default
``RUN_DIR/report/`` for one run, ``./report/`` for several):

* ``loss.png``: training loss (solid) and evaluation loss (dashed, dots) against optimizer steps;
* ``loss_tokens.png``: the same against input tokens seen;
* ``lr.png``, ``grad_norm.png``, ``throughput.png`` (tokens/s and MFU);
* ``report.html``: those figures embedded as ``data:`` URIs (no external CSS, JS, fonts or images,
  so the file can be mailed or archived alone), the final metrics, and the run's arguments: those
  that differ from the defaults of ``lmtrain train`` first, then all of them in a ``<details>``.

Where the numbers come from
---------------------------
``RUN/log.jsonl`` holds one JSON object per logged record. A resumed run appends to the same file,
so steps can repeat; the later record wins (:func:`lmtrain.runlog.resolve_records` has the exact rule). Final
metrics come from ``all_results.json`` (else ``train_results.json`` + ``eval_results.json``, else
the log's last summary and evaluation records); arguments from ``training_args.json``; both fall
back to the newest complete ``checkpoint-*`` of a run still in progress.

Tokens seen at step *s* are ``s * tokens_per_step``. ``tokens_per_step`` is
``num_input_tokens_seen / global_step`` from ``trainer_state.json`` (exact for fixed-length blocks,
the average step otherwise; it counts every process and micro-batch), else
``per_device_train_batch_size * gradient_accumulation_steps * world_size * block_size`` when
``training_args.json`` records a block size. Integrating the logged ``tokens_per_second`` over
wall-clock time is not used: the records' times include evaluation and checkpointing pauses.

matplotlib (Agg, no display needed) is a dependency of lmtrain (the ``report`` extra, kept for old
install lines, adds nothing more); it is imported only when the figures are drawn.

Layout: :mod:`.runs` reads a run directory (its log through :mod:`lmtrain.runlog`), :mod:`.figures`
draws, :mod:`.page` renders the HTML and holds :func:`build_report` and ``lmtrain report``.
"""

from ..runlog import read_log, resolve_records
from .figures import FIGURES, INSTALL_HINT, Plotter
from .page import build_report, cmd_report, render_html
from .runs import Run, load_run

__all__ = [
    "FIGURES",
    "INSTALL_HINT",
    "Plotter",
    "Run",
    "build_report",
    "cmd_report",
    "load_run",
    "read_log",
    "render_html",
    "resolve_records",
]
