import copy
import functools
import json
import math
import shutil

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file
from torch import nn

from satcompress.cli import main
from satcompress.compress.distill import (
    DistillationLoss,
    DistillConfig,
    distill,
    kd_loss,
    load_teacher,
)
from satcompress.compress.distill.loss import cache_enabled
from satcompress.compress.distill.teacher import TeacherMismatchError
from satcompress.config import ConfigError
from satcompress.evaluate import evaluate
from satcompress.models import create_model
from satcompress.preprocess import AugmentConfig, InputSpec
from satcompress.train import TrainConfig, train
from tiny_training import tiny_train_config

STUDENT_LOGITS = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]
TEACHER_LOGITS = [[3.0, 0.0, -2.0], [-1.0, 0.5, 2.0]]
LABELS = [0, 2]


_config = functools.partial(tiny_train_config, epochs=1)


@pytest.fixture(scope="module")
def teacher_run(eurosat_root, dataset, tmp_path_factory):
    """A tiny test_resnet teacher trained for one epoch (run directory with its card)."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    # channels_last=False: torch 2.14.1 on CPU crashes in the weight gradient of test_resnet's
    # 8->16 strided 1x1 convolution in channels-last format (the teacher only runs forward)
    config = _config(eurosat_root, model="test_resnet", channels_last=False)
    train(config, run, dataset=dataset, progress=False)
    return run


class FixedTeacher(nn.Module):
    """Returns the same logits row for every image."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.logits[: x.shape[0]] * self.scale


def _hand_kd(student, teacher, temperature):
    """T^2 * mean over rows of sum_k p_t,k * (log p_t,k - log p_s,k), written out."""
    total = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        s_exp = [math.exp(v / temperature) for v in s_row]
        t_exp = [math.exp(v / temperature) for v in t_row]
        p_s = [v / sum(s_exp) for v in s_exp]
        p_t = [v / sum(t_exp) for v in t_exp]
        total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s, strict=True))
    return temperature**2 * total / len(student)


def _loss(config, teacher_logits=TEACHER_LOGITS, **kwargs):
    teacher = FixedTeacher(teacher_logits)
    return DistillationLoss(teacher, InputSpec(), config, image_size=(8, 8), **kwargs)


def _images(n=2, size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_loss_equals_the_hand_computation(temperature):
    student, teacher = torch.tensor(STUDENT_LOGITS), torch.tensor(TEACHER_LOGITS)
    expected = _hand_kd(STUDENT_LOGITS, TEACHER_LOGITS, temperature)
    assert kd_loss(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss(teacher, teacher, temperature).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_distillation_loss_mixes_ce_and_kd_by_alpha(alpha):
    logits, labels = torch.tensor(STUDENT_LOGITS), torch.tensor(LABELS)
    loss = _loss(DistillConfig(temperature=2.0, alpha=alpha), label_smoothing=0.1)
    value = loss(logits, labels, _images()).item()
    ce = F.cross_entropy(logits, labels, label_smoothing=0.1).item()
    kd = _hand_kd(STUDENT_LOGITS, TEACHER_LOGITS, 2.0)
    assert value == pytest.approx((1 - alpha) * ce + alpha * kd, rel=1e-5)
    if alpha == 0:  # plain cross-entropy: the teacher is not even run
        assert value == pytest.approx(ce, rel=1e-7) and loss.stats()["teacher_images"] == 0


def test_higher_temperature_gives_softer_targets_and_tends_to_logit_matching():
    teacher = torch.tensor(TEACHER_LOGITS)
    entropies = []
    for t in (1.0, 2.0, 4.0, 8.0):
        p = F.softmax(teacher / t, dim=1)
        entropies.append(-(p * p.log()).sum(1).mean().item())
    assert entropies == sorted(entropies) and entropies[-1] < math.log(3)
    # Hinton: as T grows, T^2 * KL -> mean over rows of sum_k (zs_k - zt_k)^2 / (2K), zero-mean z
    student, teacher = torch.tensor(STUDENT_LOGITS).double(), teacher.double()
    zs, zt = student - student.mean(1, keepdim=True), teacher - teacher.mean(1, keepdim=True)
    limit = ((zs - zt) ** 2).sum(1).mean().item() / (2 * 3)
    assert kd_loss(student, teacher, 1000.0).item() == pytest.approx(limit, rel=1e-2)
    assert kd_loss(student, teacher, 1.0).item() != pytest.approx(limit, rel=1e-2)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (dict(temperature=0), "temperature must be > 0"),
        (dict(alpha=1.5), "alpha"),
        (dict(feature_weight=-1), "feature_weight"),
        (dict(teacher_cache="disk"), "teacher_cache must be one of"),
        (dict(feature_layers=["layer3"]), "STUDENT_LAYER:TEACHER_LAYER"),
        (dict(feature_layers={"a": "b"}, teacher_cache="memory"), "only the teacher's logits"),
    ],
)
def test_bad_distill_config_is_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**values)


def test_feature_layers_parse_and_round_trip():
    config = DistillConfig(feature_layers=["8:layer1", "blocks.0:blocks.1"])
    assert config.feature_layers == {"8": "layer1", "blocks.0": "blocks.1"}
    assert DistillConfig.from_dict(config.to_dict()) == config


def test_teacher_cache_is_exact_and_hits_on_repeated_images():
    teacher = create_model("test_resnet", 3).eval()
    spec = InputSpec(size=(16, 16))
    loss = DistillationLoss(teacher, spec, DistillConfig(teacher_cache="memory"), image_size=(8, 8))
    images = _images(4)
    first = loss.teacher_logits(images)
    again = loss.teacher_logits(torch.cat([images[:2].flip(3), images[2:]]))
    with torch.no_grad():
        fresh = teacher(loss.teacher.prepare(images))
    assert torch.allclose(first, fresh, atol=1e-6)
    assert torch.allclose(again[2:], first[2:], atol=0)
    stats = loss.stats()
    assert stats["teacher_cache_hits"] == 2 and stats["teacher_cache_misses"] == 6


def test_auto_cache_only_when_augmented_images_repeat():
    assert cache_enabled(DistillConfig(), AugmentConfig())
    assert not cache_enabled(DistillConfig(), AugmentConfig(shift=2))
    assert not cache_enabled(DistillConfig(), AugmentConfig(cutmix=1.0))


def test_distillation_loss_accepts_the_soft_targets_of_mixed_batches():
    teacher = create_model("test_resnet", 3).eval()
    loss = DistillationLoss(teacher, InputSpec(), DistillConfig(alpha=0.0), image_size=(8, 8))
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    soft = F.one_hot(labels, 3).float()
    assert torch.allclose(loss(logits, soft, _images(4)), loss(logits, labels, _images(4)))


def test_unknown_layer_names_list_close_matches():
    student, teacher = create_model("test_resnet", 3), create_model("test_resnet", 3)
    with pytest.raises(ValueError, match=r"unknown student layer 'layer3'.*layer1.*Available"):
        _feature_loss(student, teacher, {"layer3": "layer1"})
    with pytest.raises(ValueError, match=r"unknown teacher layer 'stemm'.*Did you mean: stem"):
        _feature_loss(student, teacher, {"layer1": "stemm"})


def _feature_loss(student, teacher, pairs, teacher_spec=None, student_spec=None):
    return DistillationLoss(
        teacher,
        teacher_spec or InputSpec(),
        DistillConfig(feature_layers=pairs),
        student=student,
        student_spec=student_spec,
        image_size=(64, 64),
    )


class _RecordOptimizer(Callback):
    def on_train_start(self, trainer, pl_module):
        self.param_ids = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}


def test_teacher_is_frozen_and_not_trained_optimised_or_saved(eurosat_root, dataset, tmp_path):
    teacher = create_model("test_resnet", 10)
    before = copy.deepcopy(teacher.state_dict())
    student = create_model("test_cnn", 10)
    recorder = _RecordOptimizer()
    config = _config(eurosat_root, ema_decay=0.9)
    result = distill(
        config,
        DistillConfig(),
        teacher,
        tmp_path / "run",
        teacher_spec=InputSpec(size=(32, 32)),
        model=student,
        dataset=dataset,
        progress=False,
        callbacks=[recorder],
    )
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert recorder.param_ids == {id(p) for p in student.parameters()}
    saved = load_file(tmp_path / "run" / "model.safetensors")
    assert set(saved) == set(student.state_dict())
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    student_keys = {f"model.{k}" for k in student.state_dict()}
    for key in ("state_dict", "current_model_state"):  # EMA keeps both
        assert set(ckpt[key]) - student_keys == {"preprocess.mean", "preprocess.inv_std"}
    assert result.summary["teacher_s"] > 0 and 0 < result.summary["teacher_share"] < 1


@pytest.mark.parametrize(
    ("teacher_name", "pairs", "teacher_spec"),
    [
        ("test_resnet", {"8": "layer1", "5": "layer2"}, InputSpec()),  # 64ch 16x16 <- 8ch 64x64
        ("test_vit", {"8": "blocks.1"}, InputSpec(size=(32, 32))),  # CNN <- ViT tokens (4x4)
    ],
)
def test_feature_distillation_trains_its_projections(
    eurosat_root, dataset, tmp_path, teacher_name, pairs, teacher_spec
):
    student = create_model("test_cnn", 10)
    teacher = create_model(teacher_name, 10)
    loss = _feature_loss(student, teacher, pairs, teacher_spec)
    shapes = loss.features.shapes
    assert shapes[0]["student"][0] != shapes[0]["teacher"][0]
    assert shapes[0]["student"][1:] != shapes[0]["teacher"][1:]
    initial = copy.deepcopy(loss.features.state_dict())
    train(_config(eurosat_root), tmp_path / "run", model=student, dataset=dataset, loss=loss,
          progress=False)  # fmt: skip
    loss.remove_hooks()
    trained = loss.features.state_dict()
    assert set(trained) == set(initial) and len(trained) == 2 * len(pairs)
    assert all(not torch.equal(initial[k], trained[k]) for k in trained)
    assert not loss.features._student.outputs and not student._forward_hooks


def test_distill_end_to_end_writes_a_record_with_the_recipe(
    eurosat_root, dataset, teacher_run, tmp_path
):
    run = tmp_path / "kd"
    config = _config(eurosat_root, epochs=2)
    kd = DistillConfig(temperature=3.0, alpha=0.6)
    result = distill(config, kd, teacher_run, run, dataset=dataset, progress=False)
    card = json.loads((run / "model.json").read_text())
    assert card["recipe"]["distill"]["temperature"] == 3.0
    settings = yaml.safe_load((run / "distill.yaml").read_text())
    assert settings == card["recipe"]["distill"]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["teacher_cache"] == "memory"  # flips/rotations only: exact cache on
    seen = summary["teacher_cache_hits"] + summary["teacher_cache_misses"]
    assert seen == summary["teacher_images"] == 2 * len(dataset.splits["train"])
    record = evaluate(
        result.model,
        dataset,
        result.input_spec,
        model_name=config.model,
        recipe={"stage": "distill", **result.card["recipe"]},
        run_dir=run,
        latency=None,
        progress=False,
    )
    saved = json.loads((run / "record.json").read_text())
    assert saved["recipe"] == record["recipe"]
    recipe = saved["recipe"]["distill"]
    assert recipe["alpha"] == 0.6 and recipe["teacher_cache_used"] == "memory"
    assert recipe["teacher"]["source"] == str(teacher_run)
    assert recipe["teacher"]["model"] == "test_resnet"
    assert recipe["teacher"]["input"] == card["recipe"]["distill"]["teacher"]["input"]
    assert saved["recipe"]["model"] == "test_cnn" and 0 <= saved["accuracy"] <= 1

    with pytest.raises(ConfigError, match="different distillation settings.*temperature"):
        distill(config, kd.replace(temperature=5.0), teacher_run, run, dataset=dataset,
                resume=True, progress=False)  # fmt: skip


def test_alpha_zero_is_plain_training(eurosat_root, dataset, teacher_run, tmp_path):
    config = _config(eurosat_root)
    L.seed_everything(config.seed, verbose=False)  # distill() seeds, then builds the student
    student = create_model("test_cnn", 10)
    plain = train(config, tmp_path / "plain", model=student, dataset=dataset, progress=False)
    kd = distill(config, DistillConfig(alpha=0.0), teacher_run, tmp_path / "kd", dataset=dataset,
                 progress=False)  # fmt: skip
    a, b = plain.model.state_dict(), kd.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert kd.summary["teacher_images"] == 0


def test_registry_name_teacher_needs_weights(teacher_run, dataset):
    found = load_teacher("test_resnet", weights=teacher_run / "model.safetensors")
    assert found.classes == dataset.classes and found.name == "test_resnet"
    with pytest.raises(ConfigError, match="--teacher-weights"):
        load_teacher("test_resnet")
    with pytest.raises(FileNotFoundError, match="neither"):
        load_teacher("no_such_teacher")
    with pytest.raises(ConfigError, match="teacher_spec"):
        load_teacher(create_model("test_cnn", 10))


def test_teacher_with_other_class_count_is_refused(eurosat_root, dataset, tmp_path):
    with pytest.raises(TeacherMismatchError, match=r"predicts 5 classes.*has 10 classes"):
        distill(_config(eurosat_root), DistillConfig(), create_model("test_cnn", 5),
                tmp_path / "a", teacher_spec=InputSpec(), dataset=dataset)  # fmt: skip


def test_teacher_trained_on_other_classes_is_refused(
    eurosat_root, imagefolder_root, dataset, tmp_path
):
    other = tmp_path / "other"
    config = TrainConfig(model="test_cnn", dataset="imagefolder", data_dir=str(imagefolder_root),
                         epochs=1, batch_size=8, ema_decay=None)  # fmt: skip
    train(config, other, progress=False)
    with pytest.raises(TeacherMismatchError, match=r"3 classes \['cloud'.*10 classes.*AnnualCrop"):
        distill(_config(eurosat_root), DistillConfig(), other, tmp_path / "a", dataset=dataset)


def test_teacher_with_same_count_but_other_names_is_refused(
    eurosat_root, dataset, teacher_run, tmp_path
):
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy(teacher_run / "model.safetensors", renamed / "model.safetensors")
    card = json.loads((teacher_run / "model.json").read_text())
    card["classes"] = [f"class_{i}" for i in range(10)]
    (renamed / "model.json").write_text(json.dumps(card))
    with pytest.raises(TeacherMismatchError, match=r"class_0.*AnnualCrop.*same count"):
        distill(_config(eurosat_root), DistillConfig(), renamed, tmp_path / "a", dataset=dataset)


def test_cli_distill_end_to_end(eurosat_root, teacher_run, tmp_path, capsys):
    run = tmp_path / "cli"
    args = [
        "distill", "--teacher", str(teacher_run), "--student", "test_cnn",
        "--dataset", "eurosat", "--data-dir", str(eurosat_root), "--run-dir", str(run),
        "--epochs", "1", "--batch-size", "16", "--temperature", "2", "--alpha", "0.5",
        "--feature-layers", "5:layer1",
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "distilled test_cnn" in out and "teacher" in out and "accuracy" in out
    record = json.loads((run / "record.json").read_text())
    assert record["recipe"]["stage"] == "distill" and record["model"] == "test_cnn"
    recipe = record["recipe"]["distill"]
    assert recipe["temperature"] == 2.0 and recipe["alpha"] == 0.5
    assert recipe["feature_layers"] == {"5": "layer1"} and recipe["teacher_cache_used"] == "none"
    assert record["train"]["teacher_s"] > 0
    assert record["size_bytes"] == (run / "model.onnx").stat().st_size


def test_cli_refuses_a_mismatched_teacher(ucmerced_root, teacher_run, tmp_path, capsys):
    args = [
        "distill", "--teacher", str(teacher_run), "--student", "test_cnn",
        "--dataset", "ucmerced", "--data-dir", str(ucmerced_root), "--run-dir", str(tmp_path),
    ]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "satcompress: error:" in err and "AnnualCrop" in err and "agricultural" in err
    assert "Traceback" not in err


def test_cli_distill_options_merge_yaml_and_flags(tmp_path):
    from satcompress.cli import build_parser, distill_config_from_args

    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump({"temperature": 6.0, "feature_layers": {"8": "layer1"}}))
    args = build_parser().parse_args(
        ["distill", "--teacher", "t", "--run-dir", "r", "--distill-config", str(path),
         "--alpha", "0.2", "--feature-layers", "5:layer2", "--student", "test_cnn"]
    )  # fmt: skip
    config = distill_config_from_args(args)
    assert config.temperature == 6.0 and config.alpha == 0.2
    assert config.feature_layers == {"8": "layer1", "5": "layer2"}
    assert args.model == "test_cnn"
