"""lmtrain.training.weights: model weights in transformers' file layouts, saved and read back whole."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from lmtrain.errors import LmtrainError
from lmtrain.training.weights import has_weights, load_model_weights, read_model_state, save_model_files
from tests.conftest import tiny_gpt2


class Tied(torch.nn.Module):
    """An embedding and an output layer that share one weight, as language models do."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(10, 4)
        self.mid = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight


class Wrapper(torch.nn.Module):
    """What DDP looks like from outside: the user's model as `.module`."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_has_weights_knows_every_layout_transformers_writes(tmp_path):
    from transformers import utils

    assert not has_weights(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    assert not has_weights(str(tmp_path))
    names = [
        utils.SAFE_WEIGHTS_NAME,
        utils.WEIGHTS_NAME,
        utils.SAFE_WEIGHTS_INDEX_NAME,
        utils.WEIGHTS_INDEX_NAME,
        utils.ADAPTER_SAFE_WEIGHTS_NAME,
        utils.ADAPTER_WEIGHTS_NAME,
    ]
    for name in names:
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).write_bytes(b"")
        assert has_weights(str(folder)), name


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pickle"])
def test_plain_module_with_tied_weights_round_trip(tmp_path, safe):
    src = Tied(seed=0)
    save_model_files(Wrapper(src), str(tmp_path), safe_serialization=safe)  # the wrapper is not saved
    assert (tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    stored = read_model_state(str(tmp_path))
    # safetensors refuses shared storage: the tied weight is stored once, under its first name
    expected = {"embed.weight", "mid.weight", "mid.bias"} | (set() if safe else {"head.weight"})
    assert set(stored) == expected
    dst = Tied(seed=1)
    load_model_weights(dst, str(tmp_path))
    assert_same_weights(dst, src)
    assert dst.head.weight.data_ptr() == dst.embed.weight.data_ptr()  # still one tensor


def test_transformers_model_saves_with_its_config_or_a_given_state_dict(tmp_path):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    try:
        for bars in (True, False):
            (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()
            save_model_files(tiny_gpt2(seed=0), str(tmp_path / "plain"))
            assert hf_logging.is_progress_bar_enabled() == bars  # the user's setting is kept
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()
    assert (tmp_path / "plain" / "config.json").is_file() and has_weights(str(tmp_path / "plain"))
    assert_same_weights(AutoModelForCausalLM.from_pretrained(tmp_path / "plain"), tiny_gpt2(seed=0))

    gathered = tiny_gpt2(seed=2)  # e.g. the full state dict gathered from FSDP shards
    save_model_files(tiny_gpt2(seed=0), str(tmp_path / "given"), state_dict=gathered.state_dict())
    dst = tiny_gpt2(seed=1)
    load_model_weights(dst, str(tmp_path / "given"))
    assert_same_weights(dst, gathered)
    assert dst.lm_head.weight.data_ptr() == dst.transformer.wte.weight.data_ptr()


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pickle"])
def test_sharded_weights_are_read_whole(tmp_path, safe):
    src = Tied(seed=0)
    state = {k: v.clone() for k, v in src.state_dict().items() if k != "head.weight"}
    shards = {"mid.weight": 1, "mid.bias": 1, "embed.weight": 2}
    ext = "safetensors" if safe else "bin"
    weight_map = {k: f"model-0000{n}-of-00002.{ext}" for k, n in shards.items()}
    for shard in set(weight_map.values()):
        part = {k: state[k] for k, name in weight_map.items() if name == shard}
        if safe:
            save_file(part, str(tmp_path / shard))
        else:
            torch.save(part, tmp_path / shard)
    index = "model.safetensors.index.json" if safe else "pytorch_model.bin.index.json"
    (tmp_path / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert has_weights(str(tmp_path))
    stored = read_model_state(str(tmp_path))
    assert stored.keys() == state.keys() and all(torch.equal(stored[k], state[k]) for k in state)
    dst = Tied(seed=1)
    load_model_weights(dst, str(tmp_path))
    assert_same_weights(dst, src)


def test_a_folder_without_weights_is_one_line(tmp_path):
    with pytest.raises(LmtrainError, match="holds no model weights") as info:
        read_model_state(str(tmp_path))
    assert "\n" not in str(info.value)


def test_weights_of_another_model_are_refused(tmp_path):
    save_model_files(Tied(), str(tmp_path))

    class Other(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.out = torch.nn.Linear(4, 4)

    with pytest.raises(LmtrainError, match=r"do not fit this model \(missing \['out.weight', 'out.bias'\]") as info:
        load_model_weights(Other(), str(tmp_path))
    assert "mid.weight" in str(info.value)  # unexpected
