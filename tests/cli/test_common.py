"""lmtrain.cli.common: --config files (the one YAML loader), and the checks made before any work."""

from __future__ import annotations

import pytest

from lmtrain.cli.common import check_model_dir, check_output_dir, quiet_model_loading, split_config
from lmtrain.errors import ConfigError, LmtrainError


def test_config_is_read_by_the_parsers_yaml_loader(tmp_path, monkeypatch):
    import lmtrain.parser

    (tmp_path / "run.yaml").write_text("learning_rate: 0.001\nmax_steps: 5\n")
    (tmp_path / "run.json").write_text('{"max_steps": 7}')
    seen = []
    real = lmtrain.parser.read_yaml
    monkeypatch.setattr(lmtrain.parser, "read_yaml", lambda path: seen.append(path) or real(path))
    argv, values = split_config(["--output_dir", "x", "--config", str(tmp_path / "run.yaml")])
    assert argv == ["--output_dir", "x"] and values == {"learning_rate": 0.001, "max_steps": 5}
    assert split_config([f"--config={tmp_path / 'run.json'}"]) == ([], {"max_steps": 7})
    assert len(seen) == 2
    assert split_config(["--max_steps", "3"]) == (["--max_steps", "3"], {})


@pytest.mark.parametrize(
    "text, message", [("a: [1, 2\nb: 3\n", "is not valid YAML"), ("- 1\n- 2\n", "must hold a mapping")]
)
def test_bad_config_is_one_line(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(LmtrainError, match=message) as info:
        split_config(["--config", str(tmp_path / "bad.yaml")])
    assert "\n" not in str(info.value) and "bad.yaml" in str(info.value)
    with pytest.raises(LmtrainError, match="no such file"):
        split_config(["--config", str(tmp_path / "missing.yaml")])


def test_output_dir_under_a_file_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError) as info:
        check_output_dir(str(tmp_path / "notes.txt" / "runs" / "a"))
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "notes.txt") in message and "is a file, not a folder" in message
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_output_dir(str(tmp_path / "notes.txt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    check_output_dir(str(tmp_path / "new" / "deeper"))  # missing folders are fine: training creates them
    check_output_dir(str(tmp_path))
    check_output_dir("relative/run")
    assert not (tmp_path / "new").exists()


def test_a_missing_model_is_named_as_the_model(tmp_path):
    with pytest.raises(ConfigError) as info:
        check_model_dir("does/not/exist")
    assert str(info.value).startswith("model 'does/not/exist' is not a local directory")
    check_model_dir(None)
    check_model_dir(str(tmp_path))


def test_quiet_model_loading_is_scoped():
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    try:
        hf_logging.enable_progress_bar()
        with quiet_model_loading():
            assert not hf_logging.is_progress_bar_enabled()
        assert hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a user who turned the bars off keeps them off
        with quiet_model_loading():
            pass
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        (hf_logging.enable_progress_bar if before else hf_logging.disable_progress_bar)()
