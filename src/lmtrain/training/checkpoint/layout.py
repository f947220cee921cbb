"""Names of a run's checkpoints and finding, cleaning and rotating them.

lmtrain only renames a `checkpoint-<step>` directory into place after writing its marker, so one
without a marker was written by someone else (transformers): it counts when it holds
trainer_state.json and weights, and it is never deleted as "incomplete".
"""

from __future__ import annotations

import os
import re
import shutil
from typing import List, Optional

from ..weights import has_weights

PREFIX = "checkpoint"
MARKER = "COMPLETE"
LMTRAIN_STATE = "lmtrain_state.json"
EXTRA = "lmtrain_extra.pt"
_CKPT_RE = re.compile(rf"^{PREFIX}-(\d+)$")
_TMP_RE = re.compile(rf"^\.{PREFIX}-(\d+)\.tmp-\d+$")
_OLD_RE = re.compile(rf"^({PREFIX}-\d+)\.old-\d+$")


def is_complete(path: str) -> bool:
    """lmtrain's marker is there, or it is a transformers checkpoint: trainer_state.json and weights.

    (transformers writes trainer_state.json after the weights, optimizer, scheduler and RNG files.)
    """
    if os.path.isfile(os.path.join(path, MARKER)):
        return True
    return os.path.isfile(os.path.join(path, "trainer_state.json")) and has_weights(path)


def list_checkpoints(output_dir: str) -> List[str]:
    """Complete checkpoints (lmtrain's and transformers') in output_dir, oldest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = _CKPT_RE.match(name)
        path = os.path.join(output_dir, name)
        if m and os.path.isdir(path) and is_complete(path):
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str) -> Optional[str]:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def get_last_checkpoint(folder: str) -> Optional[str]:
    """transformers' helper: the highest-numbered checkpoint in `folder`, a complete one when there is one."""
    found = latest_checkpoint(folder)
    if found is not None or not os.path.isdir(folder):
        return found
    dirs = [
        (int(m.group(1)), n)
        for n in os.listdir(folder)
        if (m := _CKPT_RE.match(n)) and os.path.isdir(os.path.join(folder, n))
    ]
    return os.path.join(folder, max(dirs)[1]) if dirs else None


def remove_incomplete(output_dir: str) -> List[str]:
    """Clean up after a killed save; returns what was removed.

    Only lmtrain's own leftovers go: `.checkpoint-<step>.tmp-<pid>` build dirs, `checkpoint-<step>.old-<pid>`
    replaced dirs and stray `.rng-*` files. A kill between the two renames of a re-save leaves the step
    only as one of those: the whole one is renamed back instead. `checkpoint-<step>` dirs are never
    deleted (one without a marker may be a transformers checkpoint, or a user's).
    """
    removed: List[str] = []
    if not os.path.isdir(output_dir):
        return removed
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        tmp, old = _TMP_RE.match(name), _OLD_RE.match(name)
        match = old or tmp
        if match and os.path.isdir(path):
            final = os.path.join(output_dir, match.group(1) if old else f"{PREFIX}-{match.group(1)}")
            if not os.path.exists(final) and os.path.isfile(os.path.join(path, MARKER)):
                os.replace(path, final)  # the only whole copy of this step: keep it
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        elif name.startswith(".rng-") and os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


def rotate_checkpoints(output_dir: str, limit: Optional[int], best: Optional[str] = None) -> List[str]:
    """Delete the oldest checkpoints (lmtrain's or transformers') beyond `limit`, never the latest nor the best."""
    if not limit or limit <= 0:
        return []
    ckpts = list_checkpoints(output_dir)
    protected = {ckpts[-1]} if ckpts else set()
    if best:
        protected |= {c for c in ckpts if os.path.abspath(c) == os.path.abspath(best)}
    deletable = [c for c in ckpts if c not in protected]
    excess = len(ckpts) - max(limit, len(protected))
    removed = deletable[: max(0, excess)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def keep_only(output_dir: str, keep: str) -> List[str]:
    """End of a run with save_total_limit=1 and a best checkpoint: delete every other checkpoint (transformers'
    _finalize_training), so the one checkpoint left is the best."""
    if not os.path.isdir(keep):
        return []
    removed = [c for c in list_checkpoints(output_dir) if not os.path.samefile(c, keep)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
