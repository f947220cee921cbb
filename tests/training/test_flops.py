"""Model FLOPs per token (6N + 12 L d T, counted by hand from the config), GPU peak lookups, the CPU case."""

from __future__ import annotations

import math

import pytest
import torch

from lmtrain.distributed import Runtime
from lmtrain.training import flops
from lmtrain.training.flops import flops_per_token, mfu_scale, peak_flops
from tests.conftest import tiny_gpt2

CUDA = torch.device("cuda", 0)


def gpt2_non_embedding_params(layers: int, d: int, vocab: int) -> int:
    """GPT-2's parameters without the position table, from its architecture: per block two LayerNorms (2d each),
    c_attn (d x 3d + 3d), attention c_proj (d x d + d), c_fc (d x 4d + 4d), mlp c_proj (4d x d + d); a final
    LayerNorm; and one vocab x d matrix (the token table, which is also the output layer when tied)."""
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)
    return layers * block + 2 * d + vocab * d


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("seq_len", [16, 64])
def test_gpt2_matches_6n_plus_12_l_d_t(tied, seq_len):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=64,
        n_positions=64,
        tie_word_embeddings=tied,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    assert (model.lm_head.weight is model.transformer.wte.weight) == tied
    n = gpt2_non_embedding_params(config.n_layer, config.n_embd, config.vocab_size)
    assert n == 27520
    # tied: the shared table counts once (it is the output layer); untied: the output layer counts, the input
    # table does not -- the same number either way
    expected = 6 * n + 12 * config.n_layer * config.n_embd * seq_len
    assert flops_per_token(model, seq_len) == expected


def test_llama_counts_everything_but_the_input_embeddings():
    from transformers import LlamaConfig, LlamaForCausalLM

    d, inter, layers, vocab, kv_heads, heads = 32, 64, 2, 64, 2, 4
    config = LlamaConfig(
        hidden_size=d,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    kv = d // heads * kv_heads
    block = d * d + 2 * d * kv + d * d + 3 * d * inter + 2 * d  # q, k, v, o; gate, up, down; two RMSNorms
    n = layers * block + d + vocab * d  # final norm, output layer (rotary positions have no parameters)
    assert flops_per_token(model, 32) == 6 * n + 12 * layers * d * 32


def test_a_module_without_config_counts_6n():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))  # 15 + 8 parameters
    assert flops_per_token(model, 128) == 6 * 23


class DDPLike(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.module = inner


def test_wrappers_count_the_model_inside():
    model = tiny_gpt2()
    bare = flops_per_token(model, 32)
    assert flops_per_token(DDPLike(model), 32) == bare
    compiled = torch.compile(model)  # compiles lazily: nothing runs here
    assert flops_per_token(compiled, 32) == bare
    assert flops_per_token(DDPLike(compiled), 32) == bare  # wrap_model's order: DDP around the compiled model


# ---- peak FLOP/s ----------------------------------------------------------------------------------


@pytest.fixture
def gpu_named(monkeypatch):
    def name(value: str) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: value)

    return name


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H200", 989e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),  # the PCIe card before the H100 entry that would also match
        ("NVIDIA GH200 480GB", 989e12),
        ("NVIDIA B200", 2250e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),  # not the A10's figure
        ("NVIDIA A10G", 125e12),
        ("NVIDIA A10", 125e12),
        ("NVIDIA L40S", 362e12),  # not the L4's figure
        ("NVIDIA L4", 121e12),
        ("NVIDIA GeForce RTX 4090", 165e12),
        ("NVIDIA GeForce RTX 3090", 71e12),
        ("Tesla V100-SXM2-16GB", 125e12),
        ("Tesla T4", 65e12),
    ],
)
@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
def test_half_precision_peak_by_gpu_name(gpu_named, name, peak, amp):
    gpu_named(name)
    assert peak_flops(CUDA, amp) == peak


@pytest.mark.parametrize(
    "name, tf32, peak",
    [
        ("NVIDIA A100-SXM4-80GB", True, 156e12),  # tf32 tensor cores: half the bf16 rate
        ("NVIDIA A100-SXM4-80GB", False, 19.5e12),  # plain fp32
        ("NVIDIA H100 80GB HBM3", True, 494.5e12),
        ("NVIDIA H100 80GB HBM3", False, 67e12),
        ("Tesla T4", False, 8.1e12),
    ],
)
def test_full_precision_peak_depends_on_tf32(gpu_named, monkeypatch, name, tf32, peak):
    gpu_named(name)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
    assert peak_flops(CUDA, None) == pytest.approx(peak)


def test_unknown_gpu_and_other_devices_have_no_peak(gpu_named):
    gpu_named("NVIDIA GeForce GTX 1080")
    assert peak_flops(CUDA, torch.bfloat16) is None
    assert peak_flops(torch.device("mps"), None) is None
    assert peak_flops(torch.device("meta"), torch.bfloat16) is None


def test_an_l40_is_not_taken_for_an_l4(gpu_named):
    gpu_named("NVIDIA L40")
    assert peak_flops(CUDA, torch.bfloat16) != 121e12


def test_cpu_peak_is_measured_once_per_dtype_without_touching_the_global_rng():
    flops._cpu_peak.cache_clear()
    rng = torch.get_rng_state()
    first = peak_flops(torch.device("cpu"), None)
    assert torch.equal(torch.get_rng_state(), rng)  # a resumed run's dropout must not shift
    assert math.isfinite(first) and first > 0
    assert peak_flops(torch.device("cpu"), None) == first  # cached, not measured again
    assert flops._cpu_peak.cache_info().misses == 1
    assert flops._cpu_peak.cache_info().hits == 1
    peak_flops(torch.device("cpu"), torch.bfloat16)  # bf16 autocast is measured in bf16
    assert flops._cpu_peak.cache_info().misses == 2


# ---- MFU scale ------------------------------------------------------------------------------------


def test_mfu_scale_is_flops_per_token_over_the_peak_of_all_processes(gpu_named):
    gpu_named("NVIDIA H100 80GB HBM3")
    model = tiny_gpt2()
    rt = Runtime(device=CUDA, amp_dtype=torch.bfloat16, world_size=4)
    scale = mfu_scale(model, 32, rt)
    assert scale == pytest.approx(flops_per_token(model, 32) / (989e12 * 4))
    # MFU = tokens/s x scale: 4 GPUs each at the peak, processing peak / flops-per-token tokens/s, give 1.0
    assert (4 * 989e12 / flops_per_token(model, 32)) * scale == pytest.approx(1.0)


def test_mfu_scale_is_none_without_a_length_or_a_peak(gpu_named):
    model = tiny_gpt2()
    gpu_named("NVIDIA H100 80GB HBM3")
    assert mfu_scale(model, None, Runtime(device=CUDA, amp_dtype=torch.bfloat16)) is None
    assert mfu_scale(model, 0, Runtime(device=CUDA, amp_dtype=torch.bfloat16)) is None
    gpu_named("Some Future GPU")
    assert mfu_scale(model, 32, Runtime(device=CUDA, amp_dtype=torch.bfloat16)) is None
