"""`lmtrain generate`: continue a prompt with a saved causal LM."""

from __future__ import annotations

import torch

from lmtrain import cli


def test_generate_prints_only_its_own_lines(model_dir, capfd, progress_bars_on):
    assert cli.main(["generate", "--model", str(model_dir), "--prompt", "Shall I", "--max_new_tokens", "5"]) == 0
    out, err = capfd.readouterr()
    assert "Loading weights" not in err and "it/s" not in err, err
    assert out.startswith("Shall I")


def test_temperature_zero_is_the_greedy_continuation(model_dir, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt, new = "Shall I compare thee", 8
    argv = ["generate", "--model", str(model_dir), "--prompt", prompt, "--max_new_tokens", str(new)]
    assert cli.main(argv + ["--temperature", "0"]) == 0
    printed = capsys.readouterr().out

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        for _ in range(new):  # the most likely next token, one at a time, until EOS
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == tokenizer.eos_token_id:
                break
    assert printed == tokenizer.decode(ids, skip_special_tokens=True) + "\n"


def test_sampling_follows_the_seed_and_separates_samples(model_dir, capsys):
    argv = ["generate", "--model", str(model_dir), "--prompt", "Shall I", "--max_new_tokens", "6"]
    outputs = []
    for seed in ("1", "1", "2"):
        assert cli.main(argv + ["--seed", seed, "--num_return_sequences", "2"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0] != outputs[2]
    lines = outputs[0].splitlines()
    assert lines.count("-" * 40) == 2 and lines[-1] == "-" * 40  # each sample is followed by a rule
    assert [line for line in lines if line != "-" * 40][0].startswith("Shall I")


def test_generate_without_model_is_one_line(capsys):
    assert cli.main(["generate", "--prompt", "x"]) == 2
    assert capsys.readouterr().err == "error: lmtrain generate needs --model DIR.\n"
