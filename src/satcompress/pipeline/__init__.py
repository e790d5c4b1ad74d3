"""Pipeline: stages that compose, lineage, ``load(path)``, and the analyses a search reads.

Every stage has one shape, ``stage(source, dataset, config, run_dir) -> StageResult``, and
:func:`run` dispatches on the config's type::

    import satcompress as sc
    from satcompress.pipeline import run, EvalConfig

    pruned = run(sc.PruneConfig(method="l1", ratio=0.5), "runs/r18", None, "runs/r18_p")
    quant = run(sc.QATConfig(bits=4), pruned, None, "runs/r18_p_q4")
    sc.load("runs/r18_p_q4/model.satc").card["lineage"]   # train, prune, quantize
"""

from satcompress.utils.lazy import lazy_package

__all__ = lazy_package(
    __name__,
    {
        "DataOverrides": "data",
        "dataset_for": "data",
        "load": "load",
        "StageResult": "result",
        "quantize": "quantize",
        "EvalConfig": "stages",
        "ExportConfig": "stages",
        "STAGES": "stages",
        "build_artifact": "stages",
        "distill": "stages",
        "evaluate_stage": "stages",
        "export": "stages",
        "prune": "stages",
        "run": "stages",
        "train": "stages",
    },
)
