import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from torch import nn

from satcompress.config import ConfigError
from satcompress.data import load_dataset
from satcompress.models import load_weights
from satcompress.train import TrainConfig, resolve_input_spec, train
from satcompress.train.task import _frozen_norm_statistics, _parameter_groups
from tiny_training import tiny_train_config

_config = tiny_train_config


def test_train_writes_a_complete_run_and_learns(eurosat_root, dataset, tmp_path):
    result = train(
        _config(eurosat_root, epochs=6), tmp_path / "run", dataset=dataset, progress=False
    )
    run = tmp_path / "run"
    for name in ("config.yaml", "model.safetensors", "model.json", "train_summary.json"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in (run / "splits").iterdir()) == [
        "eurosat-test.txt",
        "eurosat-train.txt",
        "eurosat-val.txt",
    ]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert TrainConfig.from_dict(saved) == _config(eurosat_root, epochs=6)
    card = json.loads((run / "model.json").read_text())
    assert card["classes"] == dataset.classes
    assert card["split_fingerprint"] == dataset.split_fingerprint
    summary = result.summary
    assert len(summary["s_per_epoch"]) == 6 and summary["train_img_per_s"] > 0
    # colour-coded fake classes are easy: far above 10% chance after a few epochs
    assert summary["best_val_accuracy"] > 0.5
    reloaded = load_weights(_fresh_cnn(len(dataset.classes)), run / "model.safetensors")
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(reloaded.eval()(x), result.model.eval()(x), atol=1e-6)


def test_a_run_logged_to_a_file_reports_each_epoch_in_one_line(
    eurosat_root, dataset, tmp_path, capsys
):
    # capsys's stderr is no terminal, like a nohup log: one plain line per epoch
    train(_config(eurosat_root, epochs=2, limit_batches=2), tmp_path / "run", dataset=dataset)
    out = capsys.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all("val/acc 0." in line or "val/acc 1." in line for line in lines)


def _fresh_cnn(num_classes):
    from satcompress.models import create_model

    return create_model("test_cnn", num_classes)


def test_same_seed_same_weights(eurosat_root, dataset, tmp_path):
    cfg = _config(eurosat_root, epochs=1)
    a = train(cfg, tmp_path / "a", dataset=dataset, progress=False).model.state_dict()
    b = train(cfg, tmp_path / "b", dataset=dataset, progress=False).model.state_dict()
    c = train(
        cfg.replace(seed=1), tmp_path / "c", dataset=dataset, progress=False
    ).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


class _Crash(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def test_resume_continues_an_interrupted_run(eurosat_root, dataset, tmp_path):
    cfg = _config(eurosat_root, epochs=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, tmp_path / "run", dataset=dataset, progress=False, callbacks=[_Crash()])
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, tmp_path / "run", dataset=dataset, progress=False)
    with pytest.raises(ConfigError, match="different configuration.*lr"):
        train(cfg.replace(lr=0.1), tmp_path / "run", dataset=dataset, resume=True, progress=False)
    result = train(cfg, tmp_path / "run", dataset=dataset, resume=True, progress=False)
    # the interrupted attempt's epoch 0 travels in the checkpoint: all 3 epochs are reported
    assert len(result.summary["s_per_epoch"]) == 3
    assert result.summary["wall_s"] > sum(result.summary["s_per_epoch"])
    assert (tmp_path / "run" / "model.safetensors").is_file()
    logs = sorted((tmp_path / "run" / "logs").glob("*/metrics.csv"))
    assert len(logs) == 2, "the interrupted attempt's metrics are kept beside the resumed one's"


def test_resume_without_checkpoint_is_refused(eurosat_root, tmp_path):
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(_config(eurosat_root), tmp_path / "none", resume=True, progress=False)


def test_users_own_module_and_ema(eurosat_root, dataset, tmp_path):
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )
    cfg = _config(eurosat_root, epochs=1, ema_decay=0.9, channels_last=False)
    result = train(cfg, tmp_path / "own", model=model, dataset=dataset, progress=False)
    assert result.model is model
    assert result.summary["best_val_accuracy"] is not None


def test_norm_and_bias_parameters_get_their_own_weight_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    params = list(model.parameters())
    assert _parameter_groups(params, 5e-4, None) == [{"params": params, "weight_decay": 5e-4}]
    matrices, flat = _parameter_groups(params, 5e-4, 0.0)
    assert matrices["weight_decay"] == 5e-4 and flat["weight_decay"] == 0.0
    assert {id(p) for p in matrices["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert len(flat["params"]) == 4  # conv bias, BN scale and shift, linear bias
    sgd = torch.optim.SGD(_parameter_groups(params, 5e-4, 0.0), lr=0.1, weight_decay=5e-4)
    model[1].weight.grad = torch.zeros(4)
    sgd.step()  # zero gradient, no decay: the BN scale stays exactly 1
    assert torch.equal(model[1].weight.detach(), torch.ones(4))


def test_cutmix_mixup_training_learns_with_soft_targets(eurosat_root, dataset, tmp_path):
    cfg = _config(eurosat_root, epochs=4, augment={"cutmix": 1.0, "mixup": 0.2})
    result = train(cfg, tmp_path / "mix", dataset=dataset, progress=False)
    assert result.summary["best_val_accuracy"] > 0.5
    saved = yaml.safe_load((tmp_path / "mix" / "config.yaml").read_text())
    assert saved["augment"]["cutmix"] == 1.0 and saved["augment"]["mixup"] == 0.2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(optimizer="adam"), "optimizer must be one of"),
        (dict(epochs=0), "epochs must be >= 1"),
        (dict(normalize="custom"), "needs both mean and std"),
        (dict(warmup=1.5), "warmup"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(sam_rho=-0.05), "sam_rho must be in"),
        (dict(norm_bias_weight_decay=-1e-4), "norm_bias_weight_decay must be >= 0"),
        (dict(train_input_size=4), "train_input_size must be >= 8"),
        (dict(train_input_fraction=1.0), "train_input_fraction must be in"),
    ],
)
def test_bad_config_is_refused_with_a_clear_message(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, **overrides)


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match="unknown TrainConfig option.*epoch_count"):
        TrainConfig.from_dict({"epoch_count": 3})


def test_config_round_trips_through_yaml(tmp_path):
    cfg = TrainConfig(model="resnet18", model_kwargs={"a": 1}, mean=(0.1, 0.2, 0.3), std=(1, 1, 1))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert TrainConfig.from_yaml(path) == cfg


def test_input_spec_resolution(dataset, tmp_path):
    spec = resolve_input_spec(_config(tmp_path), dataset)
    mean, std = dataset.channel_stats()
    assert spec.mean == pytest.approx(mean, abs=1e-6) and spec.size is None
    custom = _config(tmp_path, normalize="custom", mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1))
    assert resolve_input_spec(custom, dataset).std == (0.3, 0.2, 0.1)
    vit = _config(tmp_path, model="test_vit", normalize="imagenet")
    assert resolve_input_spec(vit, dataset).size is not None


@pytest.mark.parametrize(
    ("model", "kwargs", "side"),
    [
        ("vit_tiny_patch16", {"img_size": 64, "patch_size": 16}, 64),
        ("clip_vit_b32", {"image_size": 64}, 64),  # CLIP names its size image_size
        ("clip_vit_b32", {}, 224),
        ("resnet18", {}, None),  # any size: the data's
    ],
)
def test_input_spec_takes_the_side_from_the_models_own_size_keyword(
    dataset, tmp_path, model, kwargs, side
):
    config = _config(tmp_path, model=model, model_kwargs=kwargs)
    assert resolve_input_spec(config, dataset).size == (side and (side, side))


def test_command_line_key_values_parse_numbers_yaml_leaves_strings():
    from satcompress.cli import build_parser, train_config_from_args

    argv = ["train", "--model", "mobilenet_v2", "--model-kwargs", "width_mult=5e-1",
            "--augment", "shift=4", "hflip=false", "--run-dir", "x"]  # fmt: skip
    config = train_config_from_args(build_parser().parse_args(argv))
    assert config.model_kwargs == {"width_mult": 0.5}  # YAML 1.1 alone gives "5e-1"
    assert (config.augment.shift, config.augment.hflip) == (4, False)


def test_progressive_resizing_trains_first_epochs_larger_then_at_the_model_input(
    eurosat_root, dataset, tmp_path
):
    native = tuple(dataset.splits["train"].images.shape[-2:])
    seen = []
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 10),
    )  # fmt: skip
    model.register_forward_pre_hook(
        lambda m, args: seen.append((m.training, tuple(args[0].shape[-2:])))
    )
    big = native[0] + 16
    cfg = _config(eurosat_root, epochs=3, train_input_size=big, train_input_fraction=0.6)
    train(cfg, tmp_path / "prog", model=model, dataset=dataset, progress=False)
    train_sizes = [size for training, size in seen if training]
    per_epoch = len(train_sizes) // 3
    assert train_sizes[: 2 * per_epoch] == [(big, big)] * (2 * per_epoch)
    assert train_sizes[2 * per_epoch :] == [native] * per_epoch
    assert {size for training, size in seen if not training} == {native}


def test_sharpness_aware_steps_follow_the_plain_schedule_and_move_the_weights(
    eurosat_root, dataset, tmp_path
):
    def trained(name, **overrides):
        cfg = _config(eurosat_root, epochs=2, limit_batches=3, **overrides)
        result = train(cfg, tmp_path / name, dataset=dataset, progress=False)
        return result.model.state_dict()

    plain = trained("plain")
    # a vanishing radius: SAM's manual steps are the automatic ones (same batches, same
    # augmentation, schedule and batch-norm statistics)
    tiny = trained("tiny", sam_rho=1e-9)
    real = trained("real", sam_rho=0.5)
    assert all(torch.allclose(plain[k].float(), tiny[k].float(), atol=1e-5) for k in plain)
    weights = [k for k in plain if k.endswith("weight")]
    assert not all(torch.allclose(plain[k], real[k], atol=1e-3) for k in weights)


def test_sharpness_aware_training_learns(eurosat_root, dataset, tmp_path):
    cfg = _config(eurosat_root, epochs=4, sam_rho=0.05)
    result = train(cfg, tmp_path / "sam", dataset=dataset, progress=False)
    assert result.summary["best_val_accuracy"] > 0.5


def test_frozen_norm_statistics_leave_running_stats_and_restore_momentum():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3)).train()
    model(torch.randn(8, 3, 8, 8) + 2)
    before = model[1].running_mean.clone()
    with _frozen_norm_statistics(model):
        model(torch.randn(8, 3, 8, 8) - 5)
    assert torch.equal(model[1].running_mean, before) and model[1].momentum == 0.3
    assert model[1].num_batches_tracked.item() == 1
    model(torch.randn(8, 3, 8, 8) - 5)
    assert not torch.equal(model[1].running_mean, before)


# --- fine-tuning another dataset's weights with a new classifier (--new-head) ---------------


def _folder(root, classes):
    from fake_data import make_imagefolder

    return make_imagefolder(root, classes=tuple("abcde"[:classes]), per_class=5)


def _folder_config(data_dir, **overrides):
    values = dict(model="test_cnn", dataset="imagefolder", data_dir=str(data_dir), epochs=1)
    values.update(batch_size=8, ema_decay=None, channels_last=False, **overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def three_class_weights(tmp_path_factory):
    """Weights of a tiny model trained on a 3-class image folder."""
    root = tmp_path_factory.mktemp("source")
    result = train(_folder_config(_folder(root / "three", 3)), root / "run", progress=False)
    return result.weights_path


def test_new_head_loads_the_backbone_and_initialises_a_classifier_for_the_new_classes(
    three_class_weights, tmp_path
):
    import safetensors.torch

    from satcompress.models import classifier_name, create_model
    from satcompress.train.initial import initial_model
    from satcompress.utils.io import file_digest

    weights = str(three_class_weights)
    config = _folder_config(tmp_path, weights=weights, new_head=True)
    torch.manual_seed(0)
    model, initial = initial_model(config, 5)
    torch.manual_seed(0)
    fresh = create_model("test_cnn", 5).state_dict()
    source = safetensors.torch.load_file(weights)
    head = classifier_name(model)
    loaded = model.state_dict()
    backbone = [k for k in loaded if not k.startswith(f"{head}.")]
    assert backbone and all(torch.equal(loaded[k], source[k]) for k in backbone)
    assert not all(torch.equal(fresh[k], source[k]) for k in backbone), "trained, not as built"
    assert loaded[f"{head}.weight"].shape[0] == 5 and source[f"{head}.weight"].shape[0] == 3
    assert all(torch.equal(loaded[k], fresh[k]) for k in loaded if k.startswith(f"{head}."))
    assert initial == {
        "weights": weights,
        "sha256": file_digest(weights, "sha256"),
        "new_head": True,
        "source_classes": 3,
        "classifier": head,
    }


def test_cli_fine_tunes_another_datasets_weights_with_new_head(
    three_class_weights, tmp_path, monkeypatch, capsys
):
    from satcompress.cli import main
    from satcompress.utils.io import file_digest

    monkeypatch.chdir(tmp_path)
    five = _folder(tmp_path / "five", 5).resolve()
    data = ["--dataset", "imagefolder", "--data-dir", "five", "--epochs", "1", "--batch-size", "8"]
    args = ["train", "--model", "test_cnn", *data, "--weights", str(three_class_weights)]
    assert main([*args, "--run-dir", "plain", "--no-eval"]) == 2
    err = capsys.readouterr().err
    assert "a classifier for 3 classes" in err and "has 5" in err and "--new-head" in err, err
    leftovers = [p.name for p in (tmp_path / "plain").glob("*")]
    assert not {"config.yaml", "splits"} & set(leftovers), leftovers  # refused: nothing written
    assert main([*args, "--new-head", "--run-dir", "ft"]) == 0
    card = json.loads((tmp_path / "ft" / "model.json").read_text())
    assert card["initial_weights"] == {
        "weights": str(three_class_weights),
        "sha256": file_digest(three_class_weights, "sha256"),
        "new_head": True,
        "source_classes": 3,
        "classifier": "11",
    }
    assert card["num_classes"] == 5
    # the relative --data-dir is stored absolute: the run names its data from any folder
    saved = yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())
    assert saved["data_dir"] == str(five) and saved["new_head"] is True
    assert card["recipe"]["data_dir"] == str(five)
    assert card["lineage"][0]["config"]["data_dir"] == str(five)
    record = json.loads((tmp_path / "ft" / "record.json").read_text())
    assert record["recipe"]["data_dir"] == str(five)
    assert record["input"]["size"] == [32, 32], "the real input size, not None"
    # later stages train the fine-tuned model further: its initialisation is not re-applied
    assert main(["quantize", "--method", "qat", "--checkpoint", "ft", "--bits", "4",
                 "--epochs", "1", "--run-dir", "q"]) == 0  # fmt: skip
    assert (tmp_path / "q" / "model.satc").is_file()


def test_new_head_without_weights_is_refused():
    with pytest.raises(ConfigError, match="new_head .* give weights=FILE"):
        TrainConfig(new_head=True)


def test_resume_accepts_a_run_saved_with_relative_paths_and_before_new_fields(
    tmp_path, monkeypatch
):
    from satcompress.train.trainer import _check_same_config

    monkeypatch.chdir(tmp_path)
    config = _config("data").with_absolute_paths()
    assert config.data_dir == str(tmp_path.resolve() / "data")
    saved = {k: v for k, v in _config("data").to_dict().items() if k != "new_head"}
    _check_same_config(config, saved, tmp_path / "config.yaml")
    with pytest.raises(ConfigError, match="changed data_dir"):
        _check_same_config(config, {**saved, "data_dir": "elsewhere"}, tmp_path / "config.yaml")
    assert _config("").with_absolute_paths().data_dir == "", "empty: the source model's data"


def test_data_flags_are_stored_absolute(tmp_path, monkeypatch):
    import argparse

    from satcompress.pipeline.data import DataOverrides

    monkeypatch.chdir(tmp_path)
    given = argparse.Namespace(data_dir=Path("data"), split_dir=Path("splits"))
    overrides = DataOverrides.from_namespace(given)
    assert overrides.data_dir == str(tmp_path.resolve() / "data")
    assert overrides.split_dir == str(tmp_path.resolve() / "splits")


# --- honest output --------------------------------------------------------------------------


def test_decoding_says_what_at_which_size_into_which_cache_before_doing_it(tmp_path, caplog):
    from fake_data import make_imagefolder

    root = make_imagefolder(tmp_path / "big", classes=("a", "b"), per_class=3, size=(96, 80))
    with caplog.at_level(logging.INFO, logger="satcompress"):
        ds = load_dataset("imagefolder", root, cache_dir=tmp_path / "cache", progress=False)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decoding")]
    assert lines == [
        f"decoding 6 imagefolder images from {root} at 96x80 (the size of the images on disk; "
        f"image_size (--image-size) decodes them smaller) into the decode cache "
        f"{ds.cache_path} (about 138.2 kB)"
    ]
    assert ds.cache_path.stat().st_size == pytest.approx(6 * 3 * 96 * 80, abs=200)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="satcompress"):
        load_dataset("imagefolder", root, cache_dir=tmp_path / "cache", progress=False)
    assert not [r for r in caplog.records if r.getMessage().startswith("decoding")]


def test_lightning_lines_reach_one_handler_and_its_tips_none(monkeypatch):
    from satcompress.cli import LIGHTNING_TIPS, lightning_logs_once

    lightning = logging.getLogger("lightning")
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    monkeypatch.setattr(lightning, "propagate", True)
    monkeypatch.setattr(rank_zero, "filters", [])
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [*root.handlers, logging.NullHandler()])
    assert lightning.handlers, "import lightning gives its logger a handler of its own"
    lightning_logs_once()
    lightning_logs_once()  # idempotent

    def handlers_reached(logger):
        count = 0
        while logger is not None:
            count += len(logger.handlers)
            logger = logger.parent if logger.propagate else None
        return count

    assert handlers_reached(rank_zero) == 1

    def record(message):
        return rank_zero.makeRecord(rank_zero.name, logging.INFO, "", 0, message, (), None)

    assert not rank_zero.filter(record(LIGHTNING_TIPS[0] + " For seamless cloud logging"))
    assert rank_zero.filter(record("GPU available: False, used: False"))
