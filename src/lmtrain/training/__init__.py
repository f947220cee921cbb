"""The training loop and what it needs: state, checkpoints, callbacks, optimisation, evaluation."""
