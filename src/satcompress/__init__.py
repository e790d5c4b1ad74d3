"""satcompress: compress remote-sensing image classifiers into small, fast deployable files.

The Python API under every command::

    import satcompress as sc

    ds = sc.load_dataset("eurosat", "../shared/data")
    result = sc.train(sc.TrainConfig(model="resnet18", epochs=20), "runs/r18", dataset=ds)
    record = sc.evaluate(result.model, ds, result.input_spec, model_name="resnet18")
"""

__version__ = "0.1.0"

from satcompress.checkpoint import TrainedModel, load_trained  # noqa: E402
from satcompress.compress.distill import DistillConfig, distill  # noqa: E402
from satcompress.data import SceneDataModule, load_dataset  # noqa: E402
from satcompress.evaluate import LatencyConfig, evaluate  # noqa: E402
from satcompress.models import create_model, list_models  # noqa: E402
from satcompress.preprocess import AugmentConfig, InputSpec  # noqa: E402
from satcompress.train import TrainConfig, TrainResult, train  # noqa: E402

__all__ = [
    "AugmentConfig",
    "DistillConfig",
    "InputSpec",
    "LatencyConfig",
    "SceneDataModule",
    "TrainConfig",
    "TrainResult",
    "TrainedModel",
    "__version__",
    "create_model",
    "distill",
    "evaluate",
    "list_models",
    "load_dataset",
    "load_trained",
    "train",
]
