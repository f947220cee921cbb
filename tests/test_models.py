"""Models and tokenizers: built from scratch or loaded from a local folder, position limits, LoRA."""

from __future__ import annotations

import sys

import pytest
import torch

from lmtrain.errors import ConfigError
from lmtrain.models import (
    apply_lora,
    build_config,
    build_model,
    load_tokenizer,
    max_positions,
    parse_overrides,
    save_merged,
)
from tests.conftest import tiny_gpt2

GPT2_TINY = "n_layer=2,n_embd=32,n_head=2"
BERT_TINY = "num_hidden_layers=2,hidden_size=32,num_attention_heads=2,intermediate_size=64"


def word_tokenizer(words: int = 35):
    """A word-level tokenizer with 5 special tokens and `words` words, built in the test."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[MASK]", "[CLS]", "[SEP]", "[UNK]"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        mask_token="[MASK]",
        unk_token="[UNK]",
        bos_token="[CLS]",
        eos_token="[SEP]",
    )


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


def fits(model, length: int) -> bool:
    """Whether the model runs on a sequence of `length` tokens (position tables raise when too short)."""
    ids = torch.full((1, length), 7, dtype=torch.long)
    try:
        with torch.no_grad():
            model(input_ids=ids)
    except (IndexError, RuntimeError):
        return False
    return True


# ---- parse_overrides ------------------------------------------------------------------------------


def test_parse_overrides_reads_python_literals_and_words():
    got = parse_overrides(
        "n_layer=4, n_embd = 256,activation_function=gelu_new,scale_attn_weights=false,"
        "layer_norm_epsilon=1e-5,bos_token_id=None,use_cache=True,eos_token_id=none,"
        "sizes=[1],note=a=b,"
    )
    assert got == {
        "n_layer": 4,
        "n_embd": 256,
        "activation_function": "gelu_new",
        "scale_attn_weights": False,
        "layer_norm_epsilon": 1e-5,
        "bos_token_id": None,
        "use_cache": True,
        "eos_token_id": None,
        "sizes": [1],
        "note": "a=b",
    }
    assert type(got["layer_norm_epsilon"]) is float and type(got["n_layer"]) is int


@pytest.mark.parametrize("text", [None, "", " , "])
def test_parse_overrides_of_nothing_is_empty(text):
    assert parse_overrides(text) == {}


def test_parse_overrides_rejects_an_item_without_a_value():
    with pytest.raises(ConfigError, match="'n_layer' is not key=value"):
        parse_overrides("n_embd=32,n_layer")


# ---- from scratch -------------------------------------------------------------------------------


def test_causal_from_scratch_is_a_small_gpt2_sized_to_the_tokenizer(tok):
    from transformers import GPT2LMHeadModel

    model = build_model(tokenizer=tok, mlm=False, block_size=32, config_overrides=GPT2_TINY, seed=1)
    assert isinstance(model, GPT2LMHeadModel)
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_head) == (2, 32, 2)
    assert c.vocab_size == len(tok) == 40
    assert model.get_input_embeddings().num_embeddings == 40
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (2, 3, 0)  # [CLS], [SEP], [PAD]
    # the default 1024 positions are enough for 32: left alone
    assert c.n_positions == 1024 and max_positions(model) == 1024
    d, L = 32, 2
    by_hand = L * (12 * d * d + 13 * d) + 2 * d + 40 * d + 1024 * d  # blocks, ln_f, tied tokens, positions
    assert sum(p.numel() for p in model.parameters()) == by_hand
    assert c._attn_implementation == "sdpa"


def test_without_overrides_the_small_config_is_used(tok):
    model = build_model(tokenizer=tok, mlm=False, block_size=16)
    assert (model.config.n_layer, model.config.n_embd, model.config.n_head) == (4, 256, 4)


def test_positions_grow_to_the_block_size_unless_the_user_set_them(tok):
    grown = build_model(tokenizer=tok, mlm=False, block_size=1100, config_overrides=GPT2_TINY)
    assert grown.config.n_positions == 1100 and max_positions(grown) == 1100
    assert fits(grown, 1100)
    chosen = build_model(tokenizer=tok, mlm=False, block_size=32, config_overrides=GPT2_TINY + ",n_positions=16")
    assert chosen.config.n_positions == 16 and max_positions(chosen) == 16
    assert fits(chosen, 16) and not fits(chosen, 17)


def test_the_seed_alone_decides_the_initial_weights(tok):
    def weights(seed):
        model = build_model(tokenizer=tok, mlm=False, block_size=16, config_overrides=GPT2_TINY, seed=seed)
        return [p.detach().clone() for p in model.parameters()]

    torch.manual_seed(123)
    a = weights(5)
    torch.manual_seed(456)  # a different global state before the call changes nothing
    b = weights(5)
    c = weights(6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_masked_from_scratch_is_a_small_bert(tok):
    from transformers import BertForMaskedLM

    model = build_model(tokenizer=tok, mlm=True, block_size=32, config_overrides=BERT_TINY)
    assert isinstance(model, BertForMaskedLM)
    assert model.config.vocab_size == 40 and model.config.pad_token_id == 0
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert max_positions(model) == 512 == model.config.max_position_embeddings


def test_llama_has_no_hard_position_limit(tok):
    from transformers import LlamaForCausalLM

    model = build_model(
        tokenizer=tok,
        mlm=False,
        block_size=16,
        model_type="llama",
        config_overrides="num_hidden_layers=2,hidden_size=32,intermediate_size=64,"
        "num_attention_heads=2,num_key_value_heads=2,max_position_embeddings=8",
    )
    assert isinstance(model, LlamaForCausalLM)
    assert max_positions(model) is None
    assert fits(model, 24)  # rotary: longer than the configured length still runs


def test_roberta_positions_exclude_the_padding_offset(tok):
    model = build_model(
        tokenizer=tok,
        mlm=True,
        block_size=16,
        model_type="roberta",
        config_overrides=BERT_TINY + ",max_position_embeddings=34",
    )
    pad = model.config.pad_token_id
    assert pad == 0
    assert max_positions(model) == 34 - (pad + 1)
    assert fits(model, max_positions(model)) and not fits(model, max_positions(model) + 1)


def test_max_positions_without_a_config_is_none():
    assert max_positions(torch.nn.Linear(2, 2)) is None


def test_config_from_a_local_folder(tmp_path, tok):
    from transformers import GPT2Config

    GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=8, vocab_size=10).save_pretrained(tmp_path / "cfg")
    model = build_model(tokenizer=tok, mlm=False, block_size=32, config_name=str(tmp_path / "cfg"))
    assert (model.config.n_layer, model.config.n_embd) == (2, 16)
    assert model.config.vocab_size == 40  # sized to the tokenizer
    assert model.config.n_positions == 32  # long enough for the block


def test_build_config_applies_overrides_to_the_config(tok):
    config = build_config("gpt2", tok, 64, {"n_layer": 3, "activation_function": "relu"})
    assert config.n_layer == 3 and config.activation_function == "relu" and config.vocab_size == 40


# ---- errors ---------------------------------------------------------------------------------------


def test_unknown_model_type_suggests_close_names(tok):
    with pytest.raises(ConfigError, match="'gpt9' is not a transformers model type; try .*gpt2"):
        build_model(tokenizer=tok, mlm=False, block_size=16, model_type="gpt9")


def test_unknown_override_field_is_named(tok):
    with pytest.raises(ConfigError, match="GPT2Config has no field 'n_layerz'"):
        build_model(tokenizer=tok, mlm=False, block_size=16, config_overrides="n_layerz=2")


def test_a_type_without_the_head_is_a_config_error(tok):
    with pytest.raises(ConfigError, match="gpt2 has no masked LM head"):
        build_model(tokenizer=tok, mlm=True, block_size=16, model_type="gpt2", config_overrides=GPT2_TINY)


def test_missing_folders_get_one_line_naming_what_and_where(tmp_path, tok):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"model '.*nowhere' is not a local directory") as e:
        build_model(tokenizer=tok, mlm=False, block_size=16, model_name_or_path=missing)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"config '.*nowhere' is not a local directory"):
        build_model(tokenizer=tok, mlm=False, block_size=16, config_name=missing)
    with pytest.raises(ConfigError, match=r"tokenizer '.*nowhere' is not a local directory"):
        load_tokenizer(missing)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="not a local directory"):
        load_tokenizer(str(a_file))


def test_overrides_do_not_apply_to_a_pretrained_model(tmp_path, tok):
    with pytest.raises(ConfigError, match="only applies when training from scratch"):
        build_model(
            tokenizer=tok, mlm=False, block_size=16, model_name_or_path=str(tmp_path), config_overrides=GPT2_TINY
        )


# ---- local pretrained ----------------------------------------------------------------------------


def test_load_tokenizer_from_a_saved_folder(tmp_path, tok):
    tok.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(str(tmp_path / "tok"))
    assert len(loaded) == len(tok)
    assert loaded("w1 w7 zzz")["input_ids"] == tok("w1 w7 zzz")["input_ids"] == [6, 12, 4]
    assert (loaded.pad_token, loaded.mask_token, loaded.eos_token) == ("[PAD]", "[MASK]", "[SEP]")


def test_pretrained_model_loads_and_grows_to_a_larger_tokenizer(tmp_path):
    base = tiny_gpt2(vocab_size=64)
    base.save_pretrained(tmp_path / "m")
    small = build_model(tokenizer=word_tokenizer(30), mlm=False, block_size=16, model_name_or_path=str(tmp_path / "m"))
    assert small.get_input_embeddings().num_embeddings == 64  # a smaller tokenizer leaves the table alone
    for p, q in zip(base.parameters(), small.parameters()):
        assert torch.equal(p, q)
    big = build_model(tokenizer=word_tokenizer(65), mlm=False, block_size=16, model_name_or_path=str(tmp_path / "m"))
    table = big.get_input_embeddings().weight
    assert table.shape == (70, 32)
    assert torch.equal(table[:64], base.get_input_embeddings().weight)
    assert big.get_output_embeddings().weight.shape[0] == 70


def test_a_causal_checkpoint_cannot_load_as_masked(tmp_path, tok):
    tiny_gpt2().save_pretrained(tmp_path / "m")
    with pytest.raises(ConfigError, match="cannot be loaded as a masked LM .*drop --mlm"):
        build_model(tokenizer=tok, mlm=True, block_size=16, model_name_or_path=str(tmp_path / "m"))


# ---- LoRA -----------------------------------------------------------------------------------------


def lora_params(layers: int, d_in: int, d_out: int, r: int) -> int:
    return layers * r * (d_in + d_out)  # A: r x in, B: out x r


@pytest.mark.parametrize("targets", ["c_attn", None])  # None: peft's default for gpt2 (c_attn)
def test_lora_trains_only_the_adapters(targets):
    pytest.importorskip("peft")
    base = tiny_gpt2()
    ids = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        before = base(input_ids=ids).logits
    model = apply_lora(base, r=4, alpha=8, dropout=0.0, target_modules=targets, mlm=False)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable)
    assert sum(trainable.values()) == lora_params(2, 32, 3 * 32, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before)  # B starts at zero


def test_lora_with_unknown_targets_is_a_config_error():
    pytest.importorskip("peft")
    with pytest.raises(ConfigError, match="LoRA could not be applied .*--lora_target_modules"):
        apply_lora(tiny_gpt2(), r=4, alpha=8, dropout=0.0, target_modules="no_such_layer", mlm=False)


def test_lora_without_peft_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(ConfigError, match="needs the peft package"):
        apply_lora(tiny_gpt2(), r=4, alpha=8, dropout=0.0, target_modules=None, mlm=False)


def test_save_merged_folds_the_adapters_into_a_plain_model(tmp_path, tok):
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base = tiny_gpt2()
    w0 = base.transformer.h[0].attn.c_attn.weight.detach().clone()  # Conv1D: (in, out)
    model = apply_lora(base, r=4, alpha=8, dropout=0.0, target_modules="c_attn", mlm=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)  # as if trained: the adapters now matter
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    a, b = layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone()
    ids = torch.randint(0, 64, (2, 8))
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    save_merged(model, tok, str(tmp_path / "merged"))

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in k for k in merged.state_dict())
    # W + (B A)^T * alpha / r, transposed for GPT-2's Conv1D
    torch.testing.assert_close(merged.transformer.h[0].attn.c_attn.weight, w0 + (b @ a).T * (8 / 4))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
    assert len(load_tokenizer(str(tmp_path / "merged"))) == len(tok)


def test_save_merged_without_a_tokenizer_saves_only_the_model(tmp_path):
    pytest.importorskip("peft")
    model = apply_lora(tiny_gpt2(), r=2, alpha=2, dropout=0.0, target_modules="c_attn", mlm=False)
    save_merged(model, None, str(tmp_path / "m"))
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert "config.json" in names and not any(n.startswith("tokenizer") for n in names)
