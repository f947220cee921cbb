"""Run by tests/test_distributed.py under torchrun (and alone, as the 1-process reference)."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lmtrain import Trainer, TrainerCallback, TrainingArguments  # noqa: E402
from tests.conftest import tiny_gpt2  # noqa: E402
from tests.training.test_trainer import ragged_dataset, stack  # noqa: E402

out, batch, steps, resume = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "resume"
# LMTRAIN_TEST_SIGTERM="rank:step": that rank alone receives SIGTERM at the end of that step
sigterm = [int(x) for x in os.environ.get("LMTRAIN_TEST_SIGTERM", "-1:-1").split(":")]


class SigtermOneRank(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if [int(os.environ.get("RANK", 0)), state.global_step] == sigterm:
            import signal

            os.kill(os.getpid(), signal.SIGTERM)


args = TrainingArguments(
    output_dir=out,
    per_device_train_batch_size=batch,
    max_steps=steps,
    logging_steps=int(os.environ.get("LMTRAIN_TEST_LOGGING_STEPS", 1)),
    save_steps=2,
    learning_rate=1e-2,
    report_to="none",
    disable_tqdm=True,
    seed=0,
    overwrite_output_dir=not resume,
    use_cpu=True,
    fsdp=os.environ.get("LMTRAIN_TEST_FSDP") == "1",
)
trainer = Trainer(
    model=tiny_gpt2(), args=args, train_dataset=ragged_dataset(n=32), data_collator=stack, callbacks=[SigtermOneRank()]
)
trainer.train(resume_from_checkpoint=True if resume else None)
trainer.save_model(os.path.join(out, "final"))
if trainer.is_world_process_zero():
    losses = {r["step"]: r["loss"] for r in trainer.state.log_history if "loss" in r}
    with open(os.path.join(out, "losses.json"), "w") as f:
        json.dump(losses, f)
