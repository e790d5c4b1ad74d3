"""satcompress report: figures, report.md/html and README sections from a study's store alone."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from satcompress.cli import main
from satcompress.experiments.study import Study
from satcompress.report import build_report, headline_markdown, load_study, technique
from satcompress.report.diagram import pipeline_layout
from satcompress.report.document import MARKERS, duration, experiment_blocks, replace_section
from satcompress.report.figures import FIGURES, parse_vit_table
from satcompress.report.records import (
    BAIC,
    FP32,
    FROM_WEIGHTS,
    KD,
    OTHER,
    PRETRAINED,
    PRUNE_STRUCTURED,
    PRUNE_UNSTRUCTURED,
    PTQ,
    QAT,
    SCRATCH,
    TRANSFER,
    bits_label,
    classify,
    initialisation,
    sparsity,
)

CPU = {"model": "Test CPU", "cores": 2, "flags": ["avx2", "avx512f"]}
CLASSES = ["Forest", "River", "Highway"]
ALL_FIGURES = {spec.file for spec in FIGURES} | {"pipeline.png"}


def _record(rid, model, dataset, accuracy, size, fmt, recipe, **extra):
    return {
        "id": rid, "schema": "satcompress.record/1", "model": model, "dataset": dataset,
        "split": "test", "recipe": recipe, "accuracy": accuracy, "params": 1000, "macs": 1000,
        "size_bytes": size, "format": fmt, "latency_ms": {"bs1": 3.25, "bs64": 101.5},
        "latency": {"cpu": CPU}, "classes": CLASSES,
        "confusion_matrix": [[9, 1, 0], [0, 10, 0], [1, 0, 9]], **extra,
    }  # fmt: skip


def _qat(bits):
    return {"stage": "quantize", "method": "qat", "qat": {"bits": bits}}


def _tag(stage, seconds):  # as `satcompress study export` tags an experiment's records
    return {"name": "exp3", "preset": "cpu", "stage": stage, "kind": "quantize", "key": stage,
            "seconds": seconds, "done": 2, "stages": 3}  # fmt: skip


def _records():
    blocks = [
        {"block": i, "removed_accuracy": 0.8, "removed_drop": 0.06 - 0.01 * i, "heads": 3,
         "heads_left": 1, "heads_accuracy": 0.85, "heads_drop": 0.01}
        for i in range(3)
    ]  # fmt: skip
    vit_layers = {"baseline_accuracy": 0.86, "blocks": blocks}
    baic = {
        "budget_bytes": 1_000_000, "input": {"accuracy": 0.954815, "bytes": 44_718_668},
        "candidates": [
            {"id": "baic-1", "kind": "baic", "bytes": 990_000, "val_accuracy": 0.93},
            {"id": "uniform", "kind": "uniform", "bytes": 800_000, "val_accuracy": 0.79},
            {"id": "final", "kind": "baic", "bytes": 994_728, "test_accuracy": 0.955,
             "chosen": True},
        ],
    }  # fmt: skip
    pruning = {"structured": True, "before": {"params": 1000}, "after": {"params": 500}}
    return [
        _record("r18-fp32", "resnet18", "eurosat", 0.954815, 44_718_668, "onnx-fp32",
                {"stage": "fp32"}),
        _record("r18-ptq", "resnet18", "eurosat", 0.955556, 10_237_026, "artifact-int8",
                {"stage": "quantize", "method": "ptq", "ptq": {}},
                artifact={"stats": {"weight_bits": [8]}}, experiment=_tag("r18_int8", 42.0)),
        _record("r18-qat-w2", "resnet18", "eurosat", 0.954444, 2_233_376, "artifact-int2-mixed",
                _qat(2), artifact={"stats": {"weight_bits": [2, 8]}},
                experiment=_tag("r18_qat_w2", 3_900.0)),
        _record("r18-qat-w4", "resnet18", "eurosat", 0.953704, 5_076_522, "artifact-int4-mixed",
                _qat(4)),
        _record("r18-1MB", "resnet18", "eurosat", 0.955, 994_728, "artifact-int1-mixed", {},
                baic=baic, artifact={"stats": {"weight_bits": [1, 2, 4, 8]}}),
        _record("r18-l1", "resnet18", "eurosat", 0.950556, 10_355_792, "artifact-fp32",
                {"stage": "prune", "prune": {"method": "l1"}}, pruning=pruning),
        _record("r18-mag", "resnet18", "eurosat", 0.95537, 4_509_054, "artifact-fp32",
                {"stage": "prune", "prune": {"method": "magnitude"}},
                pruning={"structured": False, "sparsity": 0.9}),
        _record("mnv2-kd", "mobilenet_v2", "eurosat", 0.931667, 2_809_589, "onnx-fp32",
                {"stage": "distill", "model_kwargs": {"width_mult": 0.5}}),
        _record("vit", "vit_tiny_patch16", "eurosat", 0.856852, 22_114_324, "onnx-fp32",
                {"stage": "train"}, vit_layers=vit_layers),
        _record("uc-r18", "resnet18", "ucmerced", 0.864286, 44_741_405, "onnx-fp32",
                {"stage": "train", "pretrained": False, "weights": None}),
        _record("uc-r18-transfer", "resnet18", "ucmerced", 0.85, 44_741_406, "onnx-fp32",
                {"stage": "train", "pretrained": False, "weights": "eurosat.safetensors",
                 "new_head": True}),
        _record("uc-r18-qat", "resnet18", "ucmerced", 0.871, 2_240_000, "artifact-int2-mixed",
                _qat(2)),
    ]  # fmt: skip


def _study(root, records):
    results = root / "results.json"
    results.write_text(json.dumps(records))
    with Study(root / "study") as study:
        study.import_results(results)
    return root / "study"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return _study(tmp_path_factory.mktemp("report"), _records())


@pytest.fixture(scope="module")
def report(study, tmp_path_factory):
    return build_report(study, tmp_path_factory.mktemp("visuals"))


# -- classification ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"format": "onnx-fp32", "recipe": {"stage": "train"}}, FP32),
        ({"format": "onnx-fp32", "recipe": {"stage": "fp32"}}, FP32),
        ({"format": "onnx-fp32", "recipe": {"stage": "distill"}}, KD),
        ({"format": "artifact-int8", "recipe": {"stage": "quantize", "method": "ptq"}}, PTQ),
        ({"format": "artifact-int2-mixed", "recipe": _qat(2)}, QAT),
        # QAT for zero epochs: calibrated, never trained
        ({"format": "artifact-int2-mixed",
          "recipe": {"stage": "quantize", "method": "qat", "qat": {"bits": 2, "epochs": 0}}},
         PTQ),
        ({"format": "artifact-int4-mixed", "recipe": {"stage": "eval"},
          "lineage": [{"stage": "quantize", "config": {"type": "QATConfig", "epochs": 0}}]},
         PTQ),
        ({"format": "onnx-int8", "recipe": {"stage": "nncf-default"}}, PTQ),
        ({"format": "artifact-fp32", "recipe": {"stage": "prune", "prune": {"method": "l1"}}},
         PRUNE_STRUCTURED),
        ({"format": "artifact-fp32",
          "recipe": {"stage": "prune", "prune": {"method": "magnitude"}}}, PRUNE_UNSTRUCTURED),
        ({"format": "artifact-fp32", "pruning": {"structured": False}, "recipe": {}},
         PRUNE_UNSTRUCTURED),
        ({"format": "artifact-int1-mixed", "recipe": {}, "baic": {"budget_bytes": 1}}, BAIC),
        # an evaluate stage's record: the lineage names the stage that made the model
        ({"format": "artifact-int4-mixed", "recipe": {"stage": "eval"},
          "lineage": [{"stage": "train"}, {"stage": "quantize", "config": {"type": "QATConfig"}}]},
         QAT),
        ({"format": "artifact-int1-mixed", "recipe": {"stage": "eval"},
          "lineage": [{"stage": "train"}, {"stage": "baic", "config": {}}]}, BAIC),
        ({"format": "artifact-int8", "recipe": {}}, PTQ),
        ({"format": "artifact-int8", "recipe": {}, "train": {"epochs": 1}}, QAT),
        ({"format": "onnx-fp32", "recipe": {}, "sparsity": 0.5}, PRUNE_UNSTRUCTURED),
        ({"format": "none", "recipe": {}}, OTHER),
        ({"recipe": "not a dict"}, OTHER),
    ],
)  # fmt: skip
def test_technique_from_record_fields(record, expected):
    assert technique(record) == expected


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        ({"stage": "train", "pretrained": False, "weights": None}, SCRATCH),
        ({"stage": "train", "pretrained": True, "weights": None}, PRETRAINED),
        ({"stage": "train", "weights": "a.safetensors", "new_head": True}, TRANSFER),
        ({"stage": "train", "weights": "a.safetensors", "new_head": False}, FROM_WEIGHTS),
        # a compressed model: the training config of the model it came from
        ({"stage": "prune", "train": {"weights": "a.safetensors", "new_head": True}}, TRANSFER),
        ({"stage": "fp32"}, None),  # the recipe does not say
        ({"stage": "eval", "weights": "a.safetensors"}, None),  # the file it measured
        ({"weights": "a.safetensors", "new_head": True}, TRANSFER),  # BAIC: its input's recipe
    ],
)  # fmt: skip
def test_initialisation_from_the_recipe(recipe, expected):
    assert initialisation({"recipe": recipe}) == expected


def test_initialisation_follows_the_lineage_past_qat_fine_tuning():
    # a QAT file's recipe.train is its own fine-tuning (no weights): the lineage's first
    # step, the transfer training, is where the model started
    qat = {"stage": "quantize", "train": {"weights": None, "pretrained": False}}
    transfer = {"stage": "train", "config": {"weights": "eurosat.safetensors", "new_head": True}}
    distill = {"stage": "distill", "train": {"weights": None, "pretrained": False}}
    quantize = {"stage": "quantize", "config": {}}
    assert initialisation({"recipe": qat, "lineage": [transfer, quantize]}) == TRANSFER
    assert initialisation({"recipe": qat, "lineage": [distill, quantize]}) == SCRATCH
    assert initialisation({"recipe": qat}) is None  # no lineage: the origin is unknown
    assert initialisation({"recipe": qat, "lineage": [quantize]}) is None


def test_report_md_puts_scratch_and_transfer_side_by_side(report):
    text = report.markdown.read_text()
    assert "## Initialisation: ucmerced" in text and "## Initialisation: eurosat" not in text
    assert "| model | technique | from scratch | transfer (new head) |" in text
    assert "| resnet18 | fp32 | 86.43% (44,741,405 B) | 85.00% (44,741,406 B) |" in text


def test_bits_and_sparsity_from_record_fields():
    mixed = {"format": "artifact-int2-mixed", "artifact": {"stats": {"weight_bits": [8, 2]}}}
    assert bits_label(mixed) == "2/8"
    assert bits_label({"format": "artifact-int1-mixed",
                       "artifact": {"stats": {"weight_bits": [1, 2, 4, 8]}}}) == "1-8"  # fmt: skip
    assert bits_label({"format": "onnx-fp32"}) == "32"
    assert bits_label({"format": "onnx-int8"}) == "8"
    assert sparsity({"sparsity": 0.5}) == 0.5
    assert sparsity({"pruning": {"structured": True, "before": {"params": 100},
                                 "after": {"params": 25}}}) == 0.75  # fmt: skip
    assert sparsity({"format": "onnx-fp32"}) is None


# -- the report -------------------------------------------------------------------------------


def test_every_figure_with_data_is_drawn(report):
    assert set(report.figures) == ALL_FIGURES
    assert report.skipped == {}
    for path in report.figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 5_000


def test_datasets_figure_puts_each_recipe_of_two_datasets_side_by_side(tmp_path):
    from satcompress.report.figures import datasets_figure

    by_id = {r["id"]: r for r in _records()}
    l1 = {"stage": "prune", "prune": {"method": "l1"}}
    uc_l1 = _record("uc-r18-l1", "resnet18", "ucmerced", 0.835714, 10_363_183, "artifact-fp32",
                    l1, pruning={"structured": True})  # fmt: skip
    records = [by_id[i] for i in ("r18-fp32", "r18-l1", "uc-r18", "r18-mag")] + [uc_l1]
    figure = datasets_figure(load_study(_study(tmp_path, records)))
    ax = figure.axes[0]
    # the magnitude-pruned model is on one dataset only: no bars
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["resnet18\nfp32", "resnet18\npruning\n(structured)"]
    heights = sorted(round(p.get_height(), 2) for p in ax.patches)
    assert heights == [83.57, 86.43, 95.06, 95.48]
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["eurosat", "ucmerced"]


def test_the_reports_native_sizes_are_the_data_layers():
    from satcompress.data import default_image_size, list_datasets
    from satcompress.report.records import NATIVE_SIZES

    named = {d: default_image_size(d) for d in list_datasets() if default_image_size(d)}
    assert NATIVE_SIZES == named


def test_datasets_figure_compares_each_dataset_at_its_main_input_size(tmp_path):
    from satcompress.report.figures import datasets_figure

    by_id = {r["id"]: r for r in _records()}
    native = {"size": None}  # EuroSAT's default, 64 px
    fp32 = dict(by_id["r18-fp32"], input=native)
    at_64 = dict(by_id["r18-l1"], input={"size": [64, 64]})
    # an input-size ablation, more accurate: not the study's setting, so not a bar
    at_96 = _record("r18-96px", "resnet18", "eurosat", 0.9704, 44_718_668, "onnx-fp32",
                    {"stage": "fp32"}, input={"size": [96, 96]})  # fmt: skip
    uc = [dict(by_id["uc-r18"], input={"size": [128, 128]}),
          _record("uc-l1", "resnet18", "ucmerced", 0.835714, 10_363_183, "artifact-fp32",
                  {"stage": "prune", "prune": {"method": "l1"}}, pruning={"structured": True},
                  input={"size": [128, 128]}),
          _record("uc-256", "resnet18", "ucmerced", 0.9, 44_741_405, "onnx-fp32",
                  {"stage": "train"}, input={"size": None})]  # fmt: skip
    figure = datasets_figure(load_study(_study(tmp_path, [fp32, at_64, at_96, *uc])))
    ax = figure.axes[0]
    heights = sorted(round(p.get_height(), 2) for p in ax.patches)
    assert heights == [83.57, 86.43, 95.06, 95.48]
    assert "eurosat 64 px, ucmerced 128 px" in ax.get_title()


def test_layer_importance_figure_has_a_panel_per_analysed_transformer(tmp_path):
    from satcompress.report.figures import vit_figure

    by_id = {r["id"]: r for r in _records()}
    blocks = [
        {
            "block": i,
            "removed_accuracy": 0.5,
            "removed_drop": 0.1 * (i + 1),
            "heads": 12,
            "heads_left": 6,
            "heads_accuracy": 0.6,
            "heads_drop": 0.02,
        }
        for i in range(4)
    ]
    clip = _record(
        "clip",
        "clip_vit_b32",
        "eurosat",
        0.7,
        351_688_720,
        "onnx-fp32",
        {"stage": "train"},
        vit_layers={"baseline_accuracy": 0.7, "blocks": blocks},
    )
    again = dict(by_id["vit"], id="vit-again")  # the same model's result twice: one panel
    figure = vit_figure(load_study(_study(tmp_path, [by_id["vit"], again, clip])))
    titles = [ax.get_title() for ax in figure.axes]
    assert len(titles) == 2
    assert "vit_tiny_patch16 (eurosat), baseline 86.0%" in titles[0]
    assert "clip_vit_b32 (eurosat), baseline 70.0%" in titles[1]
    heights = [round(p.get_height(), 1) for p in figure.axes[1].patches]
    assert heights == [10.0, 20.0, 30.0, 40.0, 2.0, 2.0, 2.0, 2.0]
    legend = [t.get_text() for t in figure.axes[1].get_legend().get_texts()]
    assert legend == ["block removed", "heads pruned: 12 -> 6"]


def test_pruning_figure_draws_one_sweep_per_model_from_its_own_dense_model(tmp_path):
    from satcompress.report.figures import pruning_figure

    def pruned(rid, accuracy, sparsity):
        return _record(rid, "resnet18", "eurosat", accuracy, 1_000, "artifact-fp32",
                       {"stage": "prune", "prune": {"method": "magnitude"}},
                       pruning={"structured": False, "sparsity": sparsity})  # fmt: skip

    dense = _record("fp32", "resnet18", "eurosat", 0.95, 44_000_000, "onnx-fp32", {"stage": "fp32"})
    sweep = [dense, pruned("s25", 0.94, 0.25), pruned("s50", 0.93, 0.5), pruned("s90", 0.92, 0.9)]
    # another run: a better dense model and one better point, never joined in
    other = [_record("fp32-96px", "resnet18", "eurosat", 0.97, 44_000_000, "onnx-fp32",
                     {"stage": "fp32"}), pruned("o50", 0.96, 0.5)]  # fmt: skip
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    (tmp_path / "other.json").write_text(json.dumps(other))
    with Study(tmp_path / "study") as study:
        study.import_results(tmp_path / "*.json")
    ax = pruning_figure(load_study(tmp_path / "study")).axes[0]
    [line] = ax.get_lines()
    assert list(line.get_xdata()) == [0.0, 25.0, 50.0, 90.0]
    assert [round(y, 2) for y in line.get_ydata()] == [95.0, 94.0, 93.0, 92.0]


def test_pruning_figure_tells_datasets_apart_and_keeps_its_legend_off_the_lines(tmp_path):
    from matplotlib.colors import to_rgba

    from satcompress.report.figures import pruning_figure

    def pruned(rid, dataset, accuracy):
        return _record(rid, "resnet18", dataset, accuracy, 1_000, "artifact-fp32",
                       {"stage": "prune", "prune": {"method": "l1"}},
                       pruning={"structured": True, "sparsity": 0.5})  # fmt: skip

    records = [pruned("e50", "eurosat", 0.94), pruned("u50", "ucmerced", 0.84)]
    study = _study(tmp_path, records)
    ax = pruning_figure(load_study(study)).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    euro, ucm = lines["resnet18 (eurosat) structured"], lines["resnet18 (ucmerced) structured"]
    assert to_rgba(euro.get_markerfacecolor()) == to_rgba(euro.get_color())
    assert to_rgba(ucm.get_markerfacecolor()) == to_rgba("white")
    # the legend hangs below the panel, where it hides no line
    legend = ax.get_legend()
    assert legend.get_bbox_to_anchor().transformed(ax.transAxes.inverted()).y1 < 0


def test_report_md_holds_the_store_numbers(report):
    text = report.markdown.read_text()
    for number in ("95.48%", "44,718,668", "95.50%", "994,728", "95.44%", "2,233,376",
                   "93.17%", "2,809,589", "86.43%", "44,741,405", "3.25", "101.50"):  # fmt: skip
        assert number in text, number
    assert "| resnet18 | QAT | 95.44% | 2,233,376 | 20.0x | 2/8 | — |" in text
    assert "| resnet18 | pruning (unstructured) | 95.54% | 4,509,054 | 9.9x | 32 | 90% |" in text
    assert "Test CPU (AVX-512)" in text
    for name in report.figures:
        assert f"]({name})" in text


def test_report_md_has_a_table_per_experiment(report):
    text = report.markdown.read_text()
    assert "## Experiment: exp3@cpu (incomplete: 2 of 3 stages finished)" in text
    for row in ("| r18_int8 | resnet18 | PTQ | 95.56% | 10,237,026 | 4.4x | 8 | — | 3.25 | 42 s |",
                "| r18_qat_w2 | resnet18 | QAT | 95.44% | 2,233,376 | 20.0x | 2/8 | — | 3.25 | "
                "1 h 05 min |"):  # fmt: skip
        assert row in text
    assert text.index("## Experiment: exp3@cpu") < text.index("## Records: eurosat")


def test_experiment_headings_say_whether_every_stage_finished():
    entry = classify([_record("a", "resnet18", "eurosat", 0.9, 100, "onnx-fp32",
                              {"stage": "train"})], "x.json")[0]  # fmt: skip
    rows = {"e@cpu": [("a", entry, None)]}

    def heading(progress):
        return experiment_blocks(rows, [entry], progress)[0].text

    assert heading(None) == "Experiment: e@cpu (1 stage finished)"  # files exported before
    assert heading({"e@cpu": (1, 1)}) == "Experiment: e@cpu (complete: 1 stage)"
    assert heading({"e@cpu": (1, 4)}) == "Experiment: e@cpu (incomplete: 1 of 4 stages finished)"
    rows["e@cpu"] += [("b", entry, 3_000.0), ("c", entry, 900.0)]  # a: exported without time
    assert heading({"e@cpu": (3, 3)}) == (
        "Experiment: e@cpu (complete: 3 stages), 1 h 05 min of stage time"
    )


@pytest.mark.parametrize(("seconds", "text"), [(None, "—"), (42.4, "42 s"), (89, "89 s"),
                                               (95, "2 min"), (3_599, "1 h 00 min"),
                                               (7_380, "2 h 03 min")])  # fmt: skip
def test_stage_durations_read_as_people_write_them(seconds, text):
    assert duration(seconds) == text


def test_headline_rows_come_from_the_store(study):
    text = headline_markdown(load_study(study).entries)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if "|" in line}
    assert "**95.48%** | 44,718,668 | 1.0x | 32 | 3.25" in rows["fp32"]
    assert "**95.56%** | 10,237,026 | 4.4x | 8" in rows["PTQ int8"]
    assert "**95.44%** | 2,233,376 | 20.0x | 2/8" in rows["QAT 2-bit"]
    assert "**95.50%** | 994,728 | 45.0x | 1-8" in rows["BAIC ≤ 1 MB"]
    assert "mobilenet_v2 | **93.17%** | 2,809,589" in rows["KD student mobilenet_v2 (width 0.5)"]
    assert "Headline results on eurosat (resnet18)" in text


def test_headline_kd_row_is_the_distilled_students_deployable_file(tmp_path):
    # the student's int8 file names the KD record it came from: that is the deployable row
    int8 = _record("mnv2-kd-int8", "mobilenet_v2", "eurosat", 0.928889, 885_108,
                   "artifact-int8", {"stage": "quantize", "method": "ptq", "ptq": {}},
                   derived_from="mnv2-kd")  # fmt: skip
    unlinked = {k: v for k, v in int8.items() if k != "derived_from"}
    # a study stage's record says it through its card's lineage instead
    distill = {"stage": "distill", "train": {"model": "mobilenet_v2",
                                             "model_kwargs": {"width_mult": 0.5}}}  # fmt: skip
    staged = {**unlinked, "lineage": [distill, {"stage": "quantize", "config": {}}]}
    for name, extra in (("linked", int8), ("lineage", staged), ("unlinked", unlinked)):
        (tmp_path / name).mkdir()
        entries = load_study(_study(tmp_path / name, [*_records(), extra])).entries
        rows = headline_markdown(entries).splitlines()
        kd = next(line for line in rows if line.startswith("| KD student"))
        if name in ("linked", "lineage"):
            assert kd.startswith("| KD student mobilenet_v2 (width 0.5) + PTQ |")
            assert "**92.89%** | 885,108 | 50.5x | 8" in kd
        else:  # without the link it is an ordinary PTQ file: the KD row is the fp32 student
            assert kd.startswith("| KD student mobilenet_v2 (width 0.5) |")
            assert "**93.17%** | 2,809,589" in kd


def test_headline_names_a_better_file_of_another_model_within_a_budget(tmp_path):
    # ResNet-9 compressed to about 1 MB beats the ResNet-18 BAIC files: a row names it at the
    # smallest budget it fits (not again at 3 MB); a worse one adds nothing
    baic = {"budget_bytes": 1_000_000, "input": {"accuracy": 0.9713, "bytes": 26_290_211}}
    r18_3mb = _record("r18-3MB", "resnet18", "eurosat", 0.955, 2_991_115, "artifact-int1-mixed",
                      {}, baic={**baic, "budget_bytes": 3_000_000})  # fmt: skip
    for name, accuracy, size, expected in (
        ("better", 0.9702, 978_000, ["1 MB"]),
        ("worse", 0.9400, 978_000, []),
        ("over", 0.9702, 1_000_001, ["3 MB"]),
    ):
        r9 = _record(f"r9-{name}", "resnet9", "eurosat", accuracy, size, "artifact-int1-mixed",
                     {}, baic=baic)  # fmt: skip
        (tmp_path / name).mkdir()
        entries = load_study(_study(tmp_path / name, [*_records(), r18_3mb, r9])).entries
        text = headline_markdown(entries)
        rows = [line for line in text.splitlines() if line.startswith("| best ≤")]
        assert "Headline results on eurosat (resnet18)" in text
        assert "| BAIC ≤ 3 MB | resnet18 |" in text
        assert [row.split(" | ")[0][len("| best ≤ ") :] for row in rows] == [
            f"{budget}, any model" for budget in expected
        ]
        for row in rows:
            assert f"| resnet9 | **97.02%** | {size:,} |" in row


def test_report_html_is_self_contained(report):
    page = report.html.read_text()
    assert page.count("data:image/png;base64,") == len(ALL_FIGURES)
    assert "<table>" in page and '<td class="r">44,718,668</td>' in page
    assert "<strong>95.50%</strong>" in page
    for external in ('src="http', 'href="http', "<script src", "<link"):
        assert external not in page


def test_missing_data_is_skipped_and_said(tmp_path):
    records = [_record("a", "resnet18", "eurosat", 0.9, 1_000_000, "onnx-fp32",
                       {"stage": "train"}, confusion_matrix=None)]  # fmt: skip
    result = build_report(_study(tmp_path, records))
    assert result.out_dir == tmp_path / "study" / "visuals"
    assert set(result.figures) == {"accuracy-vs-bytes.png", "pipeline.png"}
    text = result.markdown.read_text()
    for name in ("PTQ against QAT", "pruning by sparsity", "EuroSAT and UC Merced",
                 "ViT layer importance", "Confusion matrices", "search trajectory"):  # fmt: skip
        line = next(line for line in text.splitlines() if name in line)
        assert "skipped, no data in the study (needs " in line
    assert not (result.out_dir / "ptq-vs-qat.png").exists()
    assert "Not in the study yet (PTQ int8: needs a PTQ record at 8 bits" in text


def test_an_empty_study_reports_without_crashing(tmp_path):
    Study(tmp_path / "empty").close()
    result = build_report(tmp_path / "empty")
    assert set(result.figures) == {"pipeline.png"}
    assert "Accuracy against deployable bytes**: skipped" in result.markdown.read_text()


def test_no_study_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no study"):
        build_report(tmp_path)


def test_stale_figures_of_skipped_data_are_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ptq-vs-qat.png").write_bytes(b"old")
    Study(tmp_path / "s").close()
    build_report(tmp_path / "s", out)
    assert not (out / "ptq-vs-qat.png").exists()


def test_vit_table_text_parses_back():
    text = ("baseline accuracy 86.40% (1000 images)\nblock   removed   heads   heads pruned\n"
            "0           62.70 (-23.7)     3->1     79.90 ( -6.5)\n"
            "1           86.40 ( -0.0)     3->1     86.00 ( -0.4)")  # fmt: skip
    result = parse_vit_table(text)
    assert result["baseline_accuracy"] == pytest.approx(0.864)
    assert [r["block"] for r in result["blocks"]] == [0, 1]
    assert result["blocks"][0]["removed_drop"] == pytest.approx(0.237)
    assert result["blocks"][0]["heads_left"] == 1
    assert parse_vit_table("nothing here") is None


def test_pipeline_layout_follows_the_stage_registry():
    layout = pipeline_layout()
    placed = [name for _, names in layout.columns for name in names]
    for kind in ("train", "distill", "prune", "quantize", "baic", "evaluate", "vit_layers"):
        assert kind in placed
    assert set(layout.teacher) >= {"distill", "prune", "quantize", "baic"}
    custom = pipeline_layout({"train": ("config",), "sparsify": ("from", "config")},
                             runnable=("train", "sparsify"), measuring=())  # fmt: skip
    assert ("compress it", ["sparsify"]) in custom.columns


# -- README sections --------------------------------------------------------------------------


def _readme(path):
    start, end = MARKERS["headline"]
    fig_start, fig_end = MARKERS["figure"]
    path.write_text(f"# Title\n\nIntro.\n\n{start}\nold numbers\n{end}\n\n"
                    f"{fig_start}\n{fig_end}\n\nThe rest.\n")  # fmt: skip
    return path


def test_readme_sections_are_replaced_and_idempotent(study, tmp_path):
    readme = _readme(tmp_path / "README.md")
    out = tmp_path / "visuals"
    assert main(["report", str(study), "--out", str(out), "--readme", str(readme)]) == 0
    first = readme.read_text()
    assert "old numbers" not in first
    assert "| fp32 | resnet18 | **95.48%** | 44,718,668 |" in first
    assert "![Accuracy against deployable bytes](visuals/accuracy-vs-bytes.png)" in first
    assert first.startswith("# Title\n\nIntro.\n\n") and first.endswith("\n\nThe rest.\n")
    assert main(["report", str(study), "--out", str(out), "--readme", str(readme)]) == 0
    assert readme.read_text() == first


def test_readme_without_markers_is_an_error(study, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert main(["report", str(study), "--out", str(tmp_path / "v"), "--readme",
                 str(readme)]) == 2  # fmt: skip
    assert readme.read_text() == "# no markers\n"
    with pytest.raises(ValueError, match="both"):
        replace_section(f"{MARKERS['headline'][0]}\nno end", "headline", "x")


# -- light imports, the script, a browser -------------------------------------------------------


def test_report_runs_without_torch(study, tmp_path):
    code = (
        "import sys\nfrom satcompress.report import build_report\n"
        f"build_report({str(study)!r}, {str(tmp_path)!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
    assert (tmp_path / "report.html").is_file()


def test_generate_visualizations_script(study, tmp_path):
    script = Path(__file__).resolve().parents[1] / "generate_visualizations.py"
    done = subprocess.run([sys.executable, str(script), str(study), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "accuracy-vs-bytes.png").is_file()
    assert f"figure {tmp_path / 'pipeline.png'}" in done.stdout


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)  # fmt: skip


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary installed")
def test_report_html_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
         "--window-size=1280,2000", report.html.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a blank page is a few kB
