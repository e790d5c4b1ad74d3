"""Moved: pruned models are saved and rebuilt by :mod:`satcompress.models.pruned`."""

from satcompress.models.pruned import (  # noqa: F401  (temporary alias, removed below)
    PRUNING_FILE,
    architecture,
    rebuild,
    save_pruned,
)
