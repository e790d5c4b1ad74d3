"""Every field of every stage config is type-checked, from YAML, flags and Python alike."""

import dataclasses
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml

import satcompress.evaluate.profile
import satcompress.pipeline.sensitivity
import satcompress.pipeline.stages
import satcompress.search.config  # noqa: F401  (registers the configs it defines)
from satcompress.cli import main
from satcompress.compress.distill import DistillConfig
from satcompress.compress.prune.config import PruneConfig
from satcompress.compress.quantize.config import PTQConfig, QATConfig
from satcompress.config import (
    _REGISTRY,
    ConfigError,
    ConfigTypeError,
    _type_hints,
    check_values,
    describe_type,
)
from satcompress.preprocess.config import AugmentConfig, InputSpec
from satcompress.search.config import BAICConfig
from satcompress.train import TrainConfig

STAGE_CONFIGS = sorted(
    (cls for name, cls in _REGISTRY.items() if cls.__module__.startswith("satcompress.")),
    key=lambda cls: cls.__name__,
)


def _scalar_fields(kind: type) -> list[tuple[type, str]]:
    """``(config class, field)`` of every field annotated ``kind`` or ``kind | None``."""
    out = []
    for cls in STAGE_CONFIGS:
        for field in dataclasses.fields(cls):
            hint = _type_hints(cls)[field.name]
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            if hint is kind or args == [kind]:
                out.append((cls, field.name))
    return out


def test_every_stage_config_is_covered():
    names = {cls.__name__ for cls in STAGE_CONFIGS}
    assert {"TrainConfig", "AugmentConfig", "PTQConfig", "QATConfig", "PruneConfig"} <= names
    assert {"DistillConfig", "BAICConfig", "InputSpec", "EvalConfig", "LatencyConfig"} <= names


@pytest.mark.parametrize(
    ("cls", "name"), _scalar_fields(int) + _scalar_fields(float), ids=lambda v: str(v)
)
def test_a_string_is_never_taken_for_a_number(cls, name):
    with pytest.raises(ConfigTypeError, match=rf"^{name}: expected .*, got 'x' \(str\)$"):
        cls(**{name: "x"})
    with pytest.raises(ConfigTypeError, match=rf"^{name}: expected"):
        cls(**{name: "3"})


@pytest.mark.parametrize(("cls", "name"), _scalar_fields(int), ids=lambda v: str(v))
def test_a_float_or_bool_is_never_truncated_to_an_int(cls, name):
    with pytest.raises(ConfigTypeError, match=rf"^{name}: expected an integer.*16.5 \(float\)"):
        cls(**{name: 16.5})
    with pytest.raises(ConfigTypeError, match=rf"^{name}: expected an integer.*True \(bool\)"):
        cls(**{name: True})


@pytest.mark.parametrize(("cls", "name"), _scalar_fields(bool), ids=lambda v: str(v))
def test_a_string_or_number_is_never_taken_for_a_bool(cls, name):
    for value in ("no", "maybe", 1):
        with pytest.raises(ConfigTypeError, match=rf"^{name}: expected true or false"):
            cls(**{name: value})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('epochs: "three"', "epochs: expected an integer, got 'three' (str)"),
        ("lr: fast", "lr: expected a number, got 'fast' (str)"),
        ("augment: [1, 2]", "augment: expected a mapping of AugmentConfig options, got [1, 2]"),
        ("batch_size: 16.5", "batch_size: expected an integer, got 16.5 (float)"),
        ('channels_last: "no"', "channels_last: expected true or false, got 'no' (str)"),
        ("augment: {shift: x}", "augment.shift: expected an integer, got 'x' (str)"),
        ("mean: [0.1, a, 0.3]", "mean: expected a list of 3 numbers or null, got [0.1, 'a', 0.3]"),
        ("model_kwargs: [1]", "model_kwargs: expected a mapping of strings to values"),
    ],
)
def test_yaml_errors_name_the_file_key_value_and_type(tmp_path, text, message):
    path = tmp_path / "train.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_yaml(path)
    assert str(err.value).startswith(f"{path}: {message}")


def test_ptq_per_channel_maybe_is_refused_by_name(tmp_path):
    path = tmp_path / "ptq.yaml"
    path.write_text("per_channel: maybe\n")
    with pytest.raises(ConfigError, match=r"ptq.yaml: per_channel: expected true or false"):
        PTQConfig.from_yaml(path)


def test_load_values_checks_types_but_leaves_ranges_to_the_merged_config(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("normalize: custom\naugment: {shift: 2}\n")  # mean and std come by flag
    values = TrainConfig.load_values(path)
    assert values == {"normalize": "custom", "augment": {"shift": 2}}
    path.write_text("epoch_count: 3\n")
    with pytest.raises(ConfigError, match=r"train.yaml: unknown TrainConfig option.*epoch_count"):
        TrainConfig.load_values(path)


@pytest.mark.parametrize(
    "text", ['epochs: "three"', "augment: [1, 2]", "batch_size: 16.5", 'channels_last: "no"']
)
def test_cli_refuses_a_mistyped_yaml_before_writing_anything(tmp_path, capsys, text):
    config = tmp_path / "train.yaml"
    config.write_text(text + "\n")
    run = tmp_path / "run"
    argv = ["train", "--config", str(config), "--run-dir", str(run), "--data-dir", "x"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"satcompress: error: {config}: {text.split(':')[0]}: expected" in err, err
    assert "Traceback" not in err and not run.exists()


def test_cli_key_value_flags_are_checked_too(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--augment", "shift=x"]) == 2
    assert "augment.shift: expected an integer, got 'x' (str)" in capsys.readouterr().err
    assert not run.exists()


def test_nested_configs_are_checked_and_named_with_their_field():
    with pytest.raises(ConfigTypeError, match=r"^distill.alpha: expected a number"):
        QATConfig(distill={"alpha": "high"})
    with pytest.raises(ConfigError, match=r"^distill: alpha .* must be in \[0, 1\]"):
        BAICConfig(distill={"alpha": 2})
    with pytest.raises(ConfigError, match=r"^augment: unknown AugmentConfig option.*jitter"):
        TrainConfig(augment={"jitter": 1})
    assert TrainConfig(augment={"shift": 2}).augment == AugmentConfig(shift=2)


def test_safe_conversions_only():
    config = TrainConfig(
        lr=1,  # an int where a float is expected: kept (recipes hash their values)
        mean=np.array([0.1, 0.2, 0.3], dtype=np.float32),  # any sequence, numpy scalars
        std=[1, 1, 1],
        data_dir=Path("data"),  # a path where a string is expected
        epochs=np.int64(3),
        channels_last=np.bool_(False),
    )
    assert config.lr == 1 and type(config.lr) is int
    assert config.mean == pytest.approx((0.1, 0.2, 0.3)) and type(config.mean) is tuple
    assert config.std == (1.0, 1.0, 1.0) and all(type(v) is float for v in config.std)
    assert config.data_dir == "data" and type(config.epochs) is int
    assert config.channels_last is False
    assert InputSpec(size=64).size == (64, 64) and InputSpec(size=[32, 48]).size == (32, 48)
    assert BAICConfig(bits="8,4,2").bits == (8, 4, 2)
    assert PruneConfig(ignored_layers="fc").ignored_layers == ["fc"]


def test_python_construction_and_replace_are_checked():
    with pytest.raises(ConfigTypeError, match="^epochs: expected an integer, got '3' \\(str\\)"):
        TrainConfig(epochs="3")
    with pytest.raises(ConfigTypeError, match="^temperature: expected a number"):
        DistillConfig().replace(temperature="hot")
    with pytest.raises(ConfigTypeError, match="^size: expected a list of 2 integers or null"):
        InputSpec(size=[1, 2, 3])
    with pytest.raises(ConfigTypeError, match="^bits_map: expected a mapping of strings to int"):
        QATConfig(bits_map=[4])
    with pytest.raises(ConfigTypeError, match=r"^bits: expected a list of integers.*'x'"):
        BAICConfig(bits="8,x")


def test_the_expected_type_is_said_in_words():
    assert describe_type(int) == "an integer"
    assert describe_type(float | None) == "a number or null"
    assert describe_type(tuple[int, ...]) == "a list of integers"
    assert describe_type(tuple[float, float, float]) == "a list of 3 numbers"
    assert describe_type(dict[str, str]) == "a mapping of strings to strings"
    assert describe_type(AugmentConfig) == "a mapping of AugmentConfig options"


def test_serialised_configs_of_every_stage_still_round_trip():
    for cls in STAGE_CONFIGS:
        config = cls()
        assert cls.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict()))) == config
        check_values(cls, config.to_dict())
