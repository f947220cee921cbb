"""Optimizer classes, kwargs and parameter groups equal transformers.Trainer's."""

from types import SimpleNamespace

import pytest
import torch
from transformers import Trainer, TrainingArguments

from lmtrain.errors import ConfigError
from lmtrain.training.optim import (
    _missing_package,
    build_optimizer,
    get_optimizer_cls_and_kwargs,
    optimizer_names,
    parameter_groups,
)
from tests.conftest import tiny_gpt2

CPU = torch.device("cpu")


def hf_args(tmp_path, **kw):
    return TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kw)


def tiny_bert():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    return BertForMaskedLM(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=64,
            max_position_embeddings=64,
        )
    )


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=64,
            max_position_embeddings=64,
        )
    )


AVAILABLE = [n for n in optimizer_names() if _missing_package(n) is None]
MISSING = [n for n in optimizer_names() if _missing_package(n) is not None]


@pytest.mark.parametrize("name", AVAILABLE)
def test_cls_and_kwargs_equal_transformers(tmp_path, name):
    args = hf_args(
        tmp_path, optim=name, learning_rate=3e-4, weight_decay=0.05, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6
    )
    model = tiny_gpt2()
    assert get_optimizer_cls_and_kwargs(args, model) == Trainer.get_optimizer_cls_and_kwargs(args, model)


@pytest.mark.parametrize(
    "name,optim_args",
    [
        ("sgd", "momentum=0.9,nesterov=true,dampening=0"),
        ("adagrad", "lr_decay=0.1, eps=1e-8"),
        ("rmsprop", "alpha=0.9,centered=true,momentum=0.5"),
    ],
)
def test_optim_args_are_honoured_like_transformers(tmp_path, name, optim_args):
    if name not in AVAILABLE:
        pytest.skip(f"{name} is not in this transformers")
    args = hf_args(tmp_path, optim=name, optim_args=optim_args)
    cls, kwargs = get_optimizer_cls_and_kwargs(args)
    assert (cls, kwargs) == Trainer.get_optimizer_cls_and_kwargs(args)
    import transformers

    if not transformers.__version__.startswith("4."):  # 4.x reads optim_args for a few optimizers only
        assert len(kwargs) > 1  # the optim_args really arrived


def test_args_without_transformers_fields_get_its_defaults(tmp_path):
    """lmtrain's args may lack optim_args, adam_* ...: transformers' defaults fill them in."""
    ours = get_optimizer_cls_and_kwargs(SimpleNamespace(optim="adamw_torch", learning_rate=1e-3))
    assert ours == Trainer.get_optimizer_cls_and_kwargs(hf_args(tmp_path, optim="adamw_torch", learning_rate=1e-3))
    cls, kwargs = get_optimizer_cls_and_kwargs(SimpleNamespace(optim="adafactor", learning_rate=1e-3))
    assert cls.__name__ == "Adafactor" and kwargs["relative_step"] is False


def test_unknown_optim_lists_valid_names():
    with pytest.raises(ConfigError, match="adamw_torch_fused") as err:
        get_optimizer_cls_and_kwargs(SimpleNamespace(optim="adamw_tourch", learning_rate=1e-3))
    assert "adamw_tourch" in str(err.value)


@pytest.mark.parametrize("name", MISSING[:3] + [n for n in MISSING[3:] if n.startswith(("galore", "schedule"))][:2])
def test_missing_package_is_one_line_with_pip_install(tmp_path, name):
    with pytest.raises(ConfigError) as err:
        get_optimizer_cls_and_kwargs(hf_args(tmp_path, optim=name), tiny_gpt2())
    message = str(err.value)
    assert f"pip install {_missing_package(name)}" in message and "\n" not in message
    with pytest.raises((ImportError, ValueError)):  # transformers cannot build it either
        Trainer.get_optimizer_cls_and_kwargs(hf_args(tmp_path, optim=name), tiny_gpt2())


@pytest.mark.parametrize("factory", [tiny_gpt2, tiny_bert, tiny_llama], ids=["gpt2", "bert", "llama"])
def test_parameter_groups_identical_to_create_optimizer(tmp_path, factory):
    model = factory()
    next(model.parameters()).requires_grad_(False)  # frozen parameters are left out by both
    theirs = Trainer(model=model, args=hf_args(tmp_path, weight_decay=0.1)).create_optimizer()
    ours = parameter_groups(model, 0.1)
    assert [[id(p) for p in g["params"]] for g in ours] == [[id(p) for p in g["params"]] for g in theirs.param_groups]
    assert [g["weight_decay"] for g in ours] == [0.1, 0.0]
    assert all(p.requires_grad for g in ours for p in g["params"])
    assert ours[0]["params"] and ours[1]["params"]


def test_norm_weights_and_biases_are_not_decayed():
    model = tiny_llama()
    no_decay = {id(p) for p in parameter_groups(model, 0.1)[1]["params"]}
    norms = [n for n, p in model.named_parameters() if "norm" in n]
    assert norms and all(id(dict(model.named_parameters())[n]) in no_decay for n in norms)
    assert id(model.model.layers[0].mlp.up_proj.weight) not in no_decay


def _train_step(model, optimizer):
    ids = torch.arange(16).reshape(2, 8) % 64
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_optimizer_pt_moves_between_the_trainers(tmp_path):
    args = hf_args(tmp_path, optim="adamw_torch", weight_decay=0.1, learning_rate=1e-2)
    hf_model = tiny_gpt2()
    hf_opt = Trainer(model=hf_model, args=args).create_optimizer()
    _train_step(hf_model, hf_opt)
    torch.save(hf_opt.state_dict(), tmp_path / "optimizer.pt")

    model = tiny_gpt2()
    model.load_state_dict(hf_model.state_dict())
    opt = build_optimizer(model, args, CPU)
    opt.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    # the file says foreach=None (transformers' plain adamw_torch); this process's foreach choice survives
    assert hf_opt.param_groups[0]["foreach"] is None and opt.param_groups[0]["foreach"] is True
    for p_hf, p in zip(hf_model.parameters(), model.parameters()):
        assert torch.equal(hf_opt.state[p_hf]["exp_avg_sq"], opt.state[p]["exp_avg_sq"])

    _train_step(hf_model, hf_opt)
    _train_step(model, opt)
    for p_hf, p in zip(hf_model.parameters(), model.parameters()):
        torch.testing.assert_close(p, p_hf, rtol=1e-5, atol=1e-6)

    # and back: lmtrain's state into the optimizer transformers builds
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    fresh = tiny_gpt2()
    fresh_opt = Trainer(model=fresh, args=args).create_optimizer()
    fresh_opt.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    assert fresh_opt.state[next(fresh.parameters())]["step"] == 2


def test_build_optimizer_kernel_choice_by_device(tmp_path):
    plain = build_optimizer(tiny_gpt2(), SimpleNamespace(optim="adamw_torch", learning_rate=1e-3), CPU)
    assert isinstance(plain, torch.optim.AdamW) and plain.defaults["foreach"] and not plain.defaults["fused"]
    cuda = build_optimizer(tiny_gpt2(), SimpleNamespace(optim="adamw_torch", learning_rate=1e-3), torch.device("cuda"))
    assert cuda.defaults["fused"]  # lmtrain fuses plain adamw_torch on CUDA
    fused = build_optimizer(tiny_gpt2(), SimpleNamespace(optim="adamw_torch_fused", learning_rate=1e-3), CPU)
    assert fused.defaults["fused"]
    meta = build_optimizer(
        tiny_gpt2(), SimpleNamespace(optim="adamw_torch_fused", learning_rate=1e-3), torch.device("meta")
    )
    assert meta.defaults["foreach"] and not meta.defaults["fused"]  # no fused kernel there


def test_build_optimizer_with_given_cls_and_kwargs():
    model = tiny_gpt2()
    opt = build_optimizer(
        model,
        SimpleNamespace(optim="adamw_torch", weight_decay=0.1),
        CPU,
        cls_and_kwargs=(torch.optim.SGD, {"lr": 0.5, "momentum": 0.9}),
    )
    assert type(opt) is torch.optim.SGD and opt.defaults["momentum"] == 0.9
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("name", [n for n in ("sgd", "adagrad", "rmsprop", "adafactor") if n in AVAILABLE])
def test_build_optimizer_for_other_names(name):
    model = tiny_gpt2()
    opt = build_optimizer(model, SimpleNamespace(optim=name, learning_rate=1e-3, weight_decay=0.1), CPU)
    cls, _ = get_optimizer_cls_and_kwargs(SimpleNamespace(optim=name, learning_rate=1e-3))
    assert type(opt) is cls and len(opt.param_groups) == 2
    before = [p.detach().clone() for p in model.parameters()]
    _train_step(model, opt)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
