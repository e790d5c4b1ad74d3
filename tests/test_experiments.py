"""The experiments layer: results store, run keys, recipe overrides; and the layering rules."""

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from satcompress.config import ConfigError
from satcompress.experiments import (
    RecordList,
    baseline_config,
    find_record_id,
    find_run_dir,
    run_key,
    run_keys,
    with_overrides,
)
from satcompress.preprocess import AugmentConfig
from satcompress.report import ablation_table, format_table
from satcompress.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "satcompress"
BASELINE_FILES = sorted((ROOT / "results").glob("baseline*.json"))
BASELINE_ROWS = [
    pytest.param(path, record, id=f"{path.name}:{record['id']}")
    for path in BASELINE_FILES
    for record in json.loads(path.read_text())
]


def _record(i, acc=0.5):
    return {
        "id": f"r{i}",
        "model": "m",
        "dataset": "d",
        "recipe": {},
        "accuracy": acc,
        "params": 1,
        "macs": 1,
        "size_bytes": 1,
        "latency_ms": {},
    }


def _overrides(base: dict, recipe: dict, prefix: str = "") -> list[str]:
    """``--recipe KEY=VALUE`` items that turn ``base`` into ``recipe`` (dotted when nested)."""
    items = []
    for key, value in recipe.items():
        if key == "stage":
            continue
        if isinstance(value, dict) and key != "model_kwargs":
            items += _overrides(base[key], value, f"{prefix}{key}.")
        elif base[key] != value:
            items.append(f"{prefix}{key}={json.dumps(value)}")
    return items


def _restricted(values: dict, like: dict) -> dict:
    """``values`` with only the keys of ``like`` (nested too): settings added since are left out."""
    return {
        k: _restricted(values[k], v) if isinstance(v, dict) and k != "model_kwargs" else values[k]
        for k, v in like.items()
    }


def test_committed_results_hold_training_rows():
    assert len(BASELINE_FILES) >= 2 and len(BASELINE_ROWS) >= len(BASELINE_FILES)


@pytest.mark.parametrize(("path", "record"), BASELINE_ROWS)
def test_benchmark_finds_every_committed_baseline_row(path, record):
    """The recipe rebuilt as ``benchmarks/baseline.py`` builds it finds its committed row."""
    recipe = record["recipe"]
    base = baseline_config(
        recipe["model"], recipe["data_dir"], epochs=recipe["epochs"], threads=recipe["threads"]
    )
    config = with_overrides(base, _overrides(base.to_dict(), recipe))
    recorded = {k: v for k, v in recipe.items() if k != "stage"}
    assert _restricted(config.to_dict(), recorded) == recorded
    records = RecordList(path)
    found = find_record_id(records, "baseline", config)
    assert found == record["id"]
    assert records.get(found) is not None
    assert record["id"].removeprefix("baseline-") in run_keys(config)
    assert Path(record["run_dir"]).name in run_keys(config)


def test_readme_command_finds_the_committed_rows_by_the_current_key():
    """``python benchmarks/baseline.py --data-dir ../shared/data``: no row is trained again."""
    records = RecordList(ROOT / "results" / "baseline.json")
    assert records.records
    for record in records.records:
        config = baseline_config(record["model"], Path("../shared/data"))
        assert f"baseline-{run_key(config)}" == record["id"]
        assert find_record_id(records, "baseline", config) == record["id"]


@dataclasses.dataclass
class _AugmentWithNewSetting(AugmentConfig):
    jitter: float = 0.0


@dataclasses.dataclass
class _TrainConfigWithNewSettings(TrainConfig):
    new_setting: float = 0.0
    new_mode: str | None = None
    augment: AugmentConfig = dataclasses.field(default_factory=_AugmentWithNewSetting)


RECIPES = [
    {},
    {"model": "mobilenet_v2", "data_dir": "../shared/data"},
    {"precision": "bf16-mixed", "sam_rho": 0.05, "train_input_size": 96},
    {"norm_bias_weight_decay": 0.0, "augment": {"shift": 4, "cutmix": 1.0}, "threads": 2},
]


@pytest.mark.parametrize("values", RECIPES)
def test_a_setting_added_at_its_default_changes_no_key(values):
    old = TrainConfig.from_dict(values)
    augment = _AugmentWithNewSetting(**values.get("augment", {}))
    new = _TrainConfigWithNewSettings.from_dict({**values, "augment": augment})
    assert "new_setting" in new.to_dict() and "jitter" in new.to_dict()["augment"]
    assert run_key(new) == run_key(old)
    assert run_keys(new) == run_keys(old)
    changed = [
        dataclasses.replace(new, new_setting=0.5),
        dataclasses.replace(new, new_mode="fast"),
        dataclasses.replace(new, augment=dataclasses.replace(augment, jitter=0.1)),
    ]
    keys = {run_key(config) for config in changed}
    assert run_key(old) not in keys and len(keys) == len(changed)


def test_run_key_ignores_execution_settings_and_sees_the_recipe():
    config = TrainConfig()
    assert run_key(config.replace(threads=2, num_workers=4)) == run_key(config)
    assert run_key(config.replace(lr=0.05)) != run_key(config)
    assert run_key(config.replace(train_input_fraction=0.5)) != run_key(config)
    assert run_key(config).startswith("resnet18-")
    assert run_keys(config)[0] == run_key(config)
    assert len(set(run_keys(config))) == len(run_keys(config))


def test_find_run_dir_prefers_an_existing_run_of_an_earlier_key(tmp_path):
    config = TrainConfig()
    assert find_run_dir(tmp_path, config) == tmp_path / run_key(config)
    earlier = tmp_path / run_keys(config)[-1]
    earlier.mkdir()
    assert find_run_dir(tmp_path, config) == earlier
    (tmp_path / run_key(config)).mkdir()
    assert find_run_dir(tmp_path, config) == tmp_path / run_key(config)


def test_with_overrides_parses_nested_and_yaml_values():
    config = with_overrides(
        TrainConfig(),
        ["augment.shift=4", "weight_decay=1e-4", "ema_decay=0.99", "precision=bf16-mixed"],
    )
    assert config.augment.shift == 4 and config.augment.hflip is True
    assert config.weight_decay == pytest.approx(1e-4)
    assert config.ema_decay == pytest.approx(0.99) and config.precision == "bf16-mixed"
    assert with_overrides(config, ["ema_decay=null"]).ema_decay is None
    kwargs = with_overrides(config, ["model_kwargs={zero_init_residual: true}"]).model_kwargs
    assert kwargs == {"zero_init_residual": True}


@pytest.mark.parametrize(
    "item", ["no_such_setting=1", "augment.no_such=1", "lr.deeper=1", "augment", "lr"]
)
def test_with_overrides_rejects_unknown_keys(item):
    with pytest.raises(ConfigError, match="training setting|KEY=VALUE"):
        with_overrides(TrainConfig(), [item])


def test_with_overrides_validates_values():
    with pytest.raises(ConfigError, match="lr"):
        with_overrides(TrainConfig(), ["lr=-1"])


def test_record_list_saves_each_row_and_skips_done_work(tmp_path):
    path = tmp_path / "results.json"
    records = RecordList(path)
    calls = []

    def run():
        calls.append(1)
        return {k: v for k, v in _record(0).items() if k != "id"}

    records.get_or_run("r0", run)
    assert len(json.loads(path.read_text())) == 1
    RecordList(path).get_or_run("r0", run)
    assert len(calls) == 1, "a saved row is not recomputed"
    records.put(_record(0, acc=0.7))
    assert [r["accuracy"] for r in RecordList(path).records] == [0.7]


def test_record_list_rejects_incomplete_records(tmp_path):
    bad = _record(1)
    del bad["size_bytes"]
    with pytest.raises(ValueError, match="size_bytes"):
        RecordList(tmp_path / "r.json").put(bad)
    assert not (tmp_path / "r.json").exists()


def test_format_table_aligns_columns_and_adds_the_cpu_line():
    records = [{"latency": {"cpu": {"model": "X", "cores": 2, "flags": ["avx2"]}}}]
    text = format_table(("a", "b"), "lr", [("x", 1)], records)
    assert text.splitlines()[:3] == ["| a | b |", "| --- | ---: |", "| x | 1 |"]
    assert text.endswith("\nCPU: X, 2 cores, flags ['avx2'].")
    with pytest.raises(ValueError, match="align"):
        format_table(("a", "b"), "l", [])


def test_ablation_table_names_what_changed():
    path = ROOT / "results" / "baseline-ablation-sam0.05-bf16.json"
    rows = ablation_table([path]).splitlines()[2:]
    assert rows and all("sam_rho=0.05" in row and "precision=bf16-mixed" in row for row in rows)
    default = ablation_table([ROOT / "results" / "baseline.json"]).splitlines()[2:]
    assert default and all("`default`" in row for row in default)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _forbidden(name: str, prefixes: tuple[str, ...]) -> bool:
    parts = name.split(".")
    is_cli = name == "satcompress.cli" or (name.startswith("satcompress.") and "cli" in parts)
    return is_cli or any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize(
    ("package", "prefixes"),
    [
        ("experiments", ("satcompress.report",)),
        ("report", ()),
        ("evaluate", ("satcompress.experiments", "satcompress.report")),
    ],
)
def test_layers_import_only_below_them(package, prefixes):
    files = sorted((SRC / package).rglob("*.py"))
    assert files
    bad = {
        f"{path.relative_to(SRC)}: {name}"
        for path in files
        for name in _imports(path)
        if _forbidden(name, prefixes)
    }
    assert not bad


def test_benchmarks_import_no_other_benchmark():
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    names = {path.stem for path in scripts}
    assert {"baseline", "quantize"} <= names
    bad = {
        f"{path.name}: {name}"
        for path in scripts
        for name in _imports(path)
        if name.split(".")[0] in names
    }
    assert not bad
