"""Per-layer sensitivity table (pipeline.sensitivity): costs, bytes, cache, round trip."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from torch import nn

from satcompress.config import ConfigError
from satcompress.models import create_model
from satcompress.models.weights import save_weights
from satcompress.pipeline.sensitivity import (
    LayerSensitivityConfig,
    Option,
    SensitivityError,
    SensitivityTable,
    layer_sensitivity,
    run_sensitivity,
    subset_indices,
)
from satcompress.preprocess import InputSpec, Preprocess
from satcompress.utils.cache import JsonCache

sensitivity_module = importlib.import_module("satcompress.pipeline.sensitivity")

SPEC = InputSpec(size=32)  # every test model runs at 32 px: 4x less work than the 64 px images
CONFIG = LayerSensitivityConfig(
    bits=(8, 2),
    channel_ratios=(0.25, 0.75),
    sparsities=(0.5, 0.9),
    num_images=32,
    calibration_images=8,
)


def _trained(name: str, dataset, steps: int = 40, **kwargs) -> nn.Module:
    """A tiny model fitted for a few full-batch Adam steps on the training split.

    An untrained model's outputs are nearly uniform whatever its weights, so every option
    would cost about nothing; a few steps make the costs differ as they should.
    """
    torch.manual_seed(0)
    model = create_model(name, dataset.num_classes, **kwargs)
    images = Preprocess(SPEC)(dataset.splits["train"].images)
    labels = dataset.splits["train"].labels
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def cnn(dataset):
    return _trained("test_cnn", dataset, width=8)


@pytest.fixture(scope="module")
def cnn_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("sensitivity-cache")


@pytest.fixture(scope="module")
def cnn_table(cnn, dataset, cnn_cache):
    return layer_sensitivity(cnn, dataset, SPEC, CONFIG, cnn_cache)


#: Block 1 of the tiny ViT is built as block 0: its layers would add time, not coverage.
VIT_UNITS = [
    "patch_embed.proj",
    "blocks.0.attn",
    "blocks.0.attn.qkv",
    "blocks.0.attn.proj",
    "blocks.0.mlp.fc1",
    "blocks.0.mlp.fc2",
    "head",
]


@pytest.fixture(scope="module")
def vit_table(dataset):
    vit = _trained("test_vit", dataset)
    config = CONFIG.replace(units=VIT_UNITS, predict_bytes=False)  # the CNN checks bytes
    return layer_sensitivity(vit, dataset, SPEC, config)


@pytest.fixture(params=["cnn", "vit"])
def table(request, cnn_table, vit_table) -> SensitivityTable:
    return {"cnn": cnn_table, "vit": vit_table}[request.param]


def _rows(table: SensitivityTable, option: str) -> list[dict]:
    return [row for row in table.units if option in row["results"]]


def test_units_and_options_follow_the_plan_naming(cnn_table, vit_table):
    assert cnn_table.unit_names() == ["0", "3", "6", "11"]
    assert cnn_table.options == ["float", "w8", "w2", "c0.25", "c0.75", "s0.5", "s0.9"]
    # the classifier takes bits and sparsity, never a channel ratio
    assert set(cnn_table.units[-1]["results"]) == {"float", "w8", "w2", "s0.5", "s0.9"}
    assert cnn_table.units[0]["group"]["kind"] == "channels"
    names = vit_table.unit_names()
    assert names == VIT_UNITS
    heads = vit_table.units[names.index("blocks.0.attn")]
    assert heads["group"]["kind"] == "heads" and heads["params"] is None
    assert set(heads["results"]) == {"float", "c0.25", "c0.75"}  # a group only: ratios only
    # 0.75 of 2 heads rounds up to both: the option cannot be applied and says why
    assert "error" in heads["results"]["c0.75"] and "error" not in heads["results"]["c0.25"]
    for table in (cnn_table, vit_table):
        assert table.data["split"] == "train" and len(table.data["indices"]) == 32
        assert not table.cached and table.seconds > 0


def test_eight_bits_cost_less_than_two_bits_for_every_layer(table):
    rows = _rows(table, "w8")
    assert rows
    for row in rows:
        w8, w2 = row["results"]["w8"], row["results"]["w2"]
        assert w8["kl"] < w2["kl"], row["name"]
        assert w8["loss_increase"] < w2["loss_increase"] + 1e-3, row["name"]
    loss = [r["results"]["w2"]["loss_increase"] - r["results"]["w8"]["loss_increase"] for r in rows]
    assert sum(d > 0 for d in loss) >= 0.75 * len(rows), loss


def test_removing_more_channels_costs_more_for_most_units(table):
    rows = [r for r in _rows(table, "c0.75") if r["group"]["kind"] == "channels"]
    assert rows and not any("error" in r["results"]["c0.75"] for r in rows)
    more = [r["name"] for r in rows if r["results"]["c0.75"]["kl"] >= r["results"]["c0.25"]["kl"]]
    assert len(more) >= 0.75 * len(rows), more
    costs = [c["kl"] for r in _rows(table, "c0.25") for c in r["results"].values() if "kl" in c]
    assert max(costs) > 0.05, "removing channels or heads must cost something somewhere"


def test_higher_sparsity_costs_more(table):
    rows = _rows(table, "s0.9")
    assert rows
    for row in rows:
        assert row["results"]["s0.9"]["kl"] >= row["results"]["s0.5"]["kl"], row["name"]


def test_unchanged_option_costs_nothing(table):
    assert len(_rows(table, "float")) == len(table.units)
    for row in table.units:
        cell = row["results"]["float"]
        assert cell["loss_increase"] == 0 and cell["kl"] == 0, row["name"]
        assert cell["accuracy"] == table.baseline["accuracy"]
        for label, cell in row["results"].items():
            if "error" not in cell:
                assert 0 <= cell["accuracy"] <= 1 and cell["kl"] >= 0, (row["name"], label)


def test_bytes_shrink_with_every_option(cnn_table):
    assert cnn_table.baseline["bytes"] > 0
    for row in cnn_table.units:
        cells = row["results"]
        assert cells["float"]["file_bytes"] == cnn_table.baseline["bytes"]
        assert cells["float"]["bytes"] > cells["w8"]["bytes"] > cells["w2"]["bytes"] > 0
        assert cells["float"]["bytes"] > cells["s0.5"]["bytes"] > cells["s0.9"]["bytes"]
        if "c0.25" in cells:
            assert cells["float"]["bytes"] > cells["c0.25"]["bytes"] > cells["c0.75"]["bytes"]
        assert cells["w8"]["file_bytes"] > cells["w2"]["file_bytes"]
        for label in ("s0.5", "s0.9", "c0.25", "c0.75"):  # no quantizer nodes added: the
            if label in cells:  # file shrinks by the unit's bytes, give or take the manifest
                saved = cells["float"]["bytes"] - cells[label]["bytes"]
                change = cnn_table.baseline["bytes"] - cells[label]["file_bytes"]
                assert abs(change - saved) < 64, (row["name"], label, change, saved)


def test_cache_hit_computes_nothing(cnn, dataset, cnn_cache, cnn_table, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the cached table was recomputed")

    monkeypatch.setattr(sensitivity_module, "_compute", fail)
    again = layer_sensitivity(cnn, dataset, SPEC, CONFIG, cnn_cache)
    assert again.cached and again.key == cnn_table.key
    assert again.units == cnn_table.units and again.data == cnn_table.data
    assert JsonCache(cnn_cache).keys() == [cnn_table.key]


def test_a_weight_or_config_change_recomputes(cnn, dataset, cnn_table, tmp_path, monkeypatch):
    calls = []

    def stub(model, dataset, spec, config, indices, progress):
        calls.append(config)
        baseline = {"loss": 1.0, "accuracy": 0.5, "bytes": None}
        data = {"indices": indices}
        return SensitivityTable([], ["float"], baseline, data, config.to_dict(), {}, "x")

    monkeypatch.setattr(sensitivity_module, "_compute", stub)
    first = layer_sensitivity(cnn, dataset, SPEC, CONFIG, tmp_path)
    assert not first.cached and len(calls) == 1
    assert layer_sensitivity(cnn, dataset, SPEC, CONFIG, tmp_path).cached and len(calls) == 1
    changed = create_model("test_cnn", dataset.num_classes, width=8)
    changed.load_state_dict(cnn.state_dict())
    with torch.no_grad():
        changed[0].weight[0, 0, 0, 0] += 1e-3
    second = layer_sensitivity(changed, dataset, SPEC, CONFIG, tmp_path)
    assert not second.cached and len(calls) == 2 and second.key != first.key
    third = layer_sensitivity(cnn, dataset, SPEC, CONFIG.replace(seed=1), tmp_path)
    assert not third.cached and len(calls) == 3 and third.data["indices"] != first.data["indices"]
    fourth = layer_sensitivity(cnn, dataset, SPEC, CONFIG.replace(bits=(4,)), tmp_path)
    assert not fourth.cached and len(calls) == 4
    assert len(JsonCache(tmp_path).keys()) == 4
    assert first.key == cnn_table.key  # the key does not depend on the cache folder


def test_table_round_trips(cnn_table, tmp_path):
    text = json.dumps(cnn_table.to_dict())
    assert SensitivityTable.from_dict(json.loads(text)) == cnn_table
    path = cnn_table.save(tmp_path / "table.json")
    assert SensitivityTable.load(path) == cnn_table
    assert cnn_table.cell("3", "w2") == cnn_table.units[1]["results"]["w2"]
    assert cnn_table.cell("11", "c0.25") is None
    with pytest.raises(KeyError, match="Did you mean"):
        cnn_table.cell("3x", "w2")
    markdown = cnn_table.markdown()
    assert "| unit (loss_increase) |" in markdown and "| unit (bytes) |" in markdown
    assert all(f"| {name} |" in markdown for name in cnn_table.unit_names())
    w2 = cnn_table.cell("6", "w2")["loss_increase"]
    assert f"{w2:+.4f}" in markdown
    with pytest.raises(SensitivityError, match="not a satcompress.layer_sensitivity"):
        SensitivityTable.from_dict({"format": "other"})


def test_subset_is_seeded_and_recorded(dataset, cnn_table):
    total = len(dataset.splits["train"].labels)
    first = subset_indices(dataset, "train", 32, seed=0)
    assert first == sorted(set(first)) and len(first) == 32 and first[-1] < total
    assert subset_indices(dataset, "train", 32, seed=0) == first
    assert subset_indices(dataset, "train", 32, seed=1) != first
    assert subset_indices(dataset, "train", 10 * total, seed=0) == list(range(total))
    assert cnn_table.data["indices"] == first
    assert cnn_table.data["split_fingerprint"] == dataset.split_fingerprint
    with pytest.raises(SensitivityError, match="no .* 'holdout' split"):
        subset_indices(dataset, "holdout", 8, 0)


def test_config_validates_and_serialises():
    config = LayerSensitivityConfig(bits=4, channel_ratios=[0.5], units="layer1.conv1")
    assert config.bits == (4,) and config.channel_ratios == (0.5,)
    assert config.units == ["layer1.conv1"]
    assert LayerSensitivityConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    labels = [o.label for o in config.options()]
    assert labels == ["float", "w4", "c0.5", "s0.5", "s0.75", "s0.9"]
    assert all(Option.parse(label).label == label for label in labels)
    assert Option.parse("w4").layer_plan() == {"bits": 4, "channel_ratio": 0.0, "sparsity": 0.0}
    for bad, match in (
        (dict(bits=(9,)), "unsupported bit-width"),
        (dict(channel_ratios=(0.0,)), "0 is the unchanged option"),
        (dict(sparsities=(1.0,)), "sparsities must be a fraction"),
        (dict(bits=(4, 4)), "holds a value twice"),
        (dict(bits=(), channel_ratios=(), sparsities=()), "no option to measure"),
        (dict(num_images=0), "num_images must be >= 1"),
    ):
        with pytest.raises(ConfigError, match=match):
            LayerSensitivityConfig(**bad)


def test_unknown_units_are_named(cnn, dataset):
    with pytest.raises(SensitivityError, match="Did you mean: 3"):
        layer_sensitivity(cnn, dataset, SPEC, CONFIG.replace(units=["3x"]))


def test_run_sensitivity_writes_the_table_and_reuses_it(cnn, dataset, tmp_path):
    config = CONFIG.replace(units=["11"], channel_ratios=(), sparsities=(0.5,))
    table = run_sensitivity(cnn, dataset, config, tmp_path, input_spec=SPEC)
    assert table.unit_names() == ["11"] and not table.cached
    assert SensitivityTable.load(tmp_path / "sensitivity.json") == table
    assert JsonCache(tmp_path / "cache").keys() == [table.key]
    again = run_sensitivity(cnn, dataset, config, tmp_path, input_spec=SPEC)
    assert again.cached and again.units == table.units
    # a run directory: its card gives architecture and input spec; same weights, same key
    run = tmp_path / "run"
    save_weights(cnn, run / "model.safetensors")
    card = {"model": "test_cnn", "num_classes": 10, "model_kwargs": {"width": 8}}
    (run / "model.json").write_text(json.dumps({**card, "input": SPEC.to_dict()}))
    loaded = run_sensitivity(run, dataset, config, tmp_path)
    assert loaded.cached and loaded.key == table.key
