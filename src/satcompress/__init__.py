"""satcompress: compress remote-sensing image classifiers into small, fast deployable files.

The Python API under every command::

    import satcompress as sc

    ds = sc.load_dataset("eurosat", "../shared/data")
    result = sc.train(sc.TrainConfig(model="resnet18", epochs=20), "runs/r18", dataset=ds)
    record = sc.evaluate(result.model, ds, result.input_spec, model_name="resnet18")

Stages compose, each taking the previous one's output (``satcompress.pipeline``)::

    pruned = sc.prune("runs/r18", None, sc.PruneConfig(method="l1", ratio=0.5), "runs/p")
    quant = sc.quantize(pruned, None, sc.QATConfig(bits=4), "runs/p_q4")
    sc.load("runs/p_q4/model.satc").card["lineage"]  # train, prune, quantize
"""

from __future__ import annotations

from satcompress.utils.lazy import lazy_package

__version__ = "0.1.0"

# The public API, imported on first use (see satcompress.utils.lazy).
__all__ = [
    "__version__",
    *lazy_package(
        __name__,
        {
            "TrainedModel": "checkpoint",
            "load_trained": "checkpoint",
            "DistillConfig": "compress.distill",
            "distill": "compress.distill",
            "PruneConfig": "compress.prune",
            "PTQConfig": "compress.quantize",
            "QATConfig": "compress.quantize",
            "EvalConfig": "pipeline",
            "ExportConfig": "pipeline",
            "StageResult": "pipeline",
            "export": "pipeline",
            "load": "pipeline",
            "prune": "pipeline",
            "quantize": "pipeline",
            "run": "pipeline",
            "BAICConfig": "search",
            "baic": "search",
            "SceneDataModule": "data",
            "load_dataset": "data",
            "LatencyConfig": "evaluate",
            "evaluate": "evaluate",
            "create_model": "models",
            "list_models": "models",
            "AugmentConfig": "preprocess",
            "InputSpec": "preprocess",
            "TrainConfig": "train",
            "TrainResult": "train",
            "train": "train",
        },
    ),
]
