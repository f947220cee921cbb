"""The `group_texts` step of transformers' run_clm.py, shared by the benchmarks that run that recipe."""

from itertools import chain


def make_group_texts(block_size: int):
    """run_clm.py's group_texts: concatenate a batch of tokenized texts and cut it into block_size pieces."""

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]])
        total_length = (total_length // block_size) * block_size
        result = {
            k: [t[i : i + block_size] for i in range(0, total_length, block_size)] for k, t in concatenated.items()
        }
        result["labels"] = result["input_ids"].copy()
        return result

    return group_texts
