"""The device side: read a ``.satc`` and classify images with it, without torch.

Everything here imports only numpy, onnx, onnxruntime, Pillow and the standard library (and
``satcompress.card`` and ``satcompress.utils``, which import nothing else), so a board next
to a camera installs only this (``pip install ./runtime``: the ``satcompress-runtime``
distribution built from these same files). ``artifact`` and ``evaluate`` use it.

* :class:`Runtime` (:mod:`.predict`): ``Runtime("model.satc").predict(images)``.
* :mod:`.tiles`: a large scene cut into tiles, streamed, written as CSV or GeoJSON.
* :mod:`.satc`: verify a ``.satc`` and rebuild its ONNX graph; :mod:`.pack`, its bit codecs.
* :mod:`.onnx`: the ONNX Runtime sessions, saturation-safe on CPUs whose int8 kernels could
  overflow (:mod:`.saturation`); every figure of this project is measured in them.
* ``python -m satcompress.runtime predict model.satc IMAGE_OR_FOLDER`` (:mod:`.cli`).

Names import on first use (ONNX Runtime takes a while).
"""

from satcompress.utils.lazy import lazy_package

__all__ = lazy_package(
    __name__,
    {
        "Prediction": "predict",
        "Runtime": "predict",
        "Artifact": "satc",
        "ArtifactError": "satc",
        "load_artifact": "satc",
        "manifest_card": "satc",
        "ImageError": "images",
        "load_image": "images",
        "SceneError": "tiles",
        "predict_scene": "tiles",
        "tile_grid": "tiles",
        "make_session": "onnx",
    },
)
