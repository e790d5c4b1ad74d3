"""The device side: read a ``.satc`` and classify images with it, without torch.

Everything here imports only numpy, onnx, onnxruntime, Pillow and the standard library (and
``satcompress.card`` and ``satcompress.utils``, which import nothing else), so a board next
to a camera installs only this (``pip install ./runtime``: the ``satcompress-runtime``
distribution built from these same files). ``artifact`` and ``evaluate`` use it.

* :class:`Runtime` (:mod:`.predict`): ``Runtime("model.satc").predict(images)``.
* :mod:`.tiles`: a large scene cut into tiles, streamed, written as CSV or GeoJSON.
* :mod:`.satc`: verify a ``.satc`` and rebuild its ONNX graph; :mod:`.pack`, its bit codecs;
  :mod:`.schema` and :mod:`.graphcheck`, what its manifest is validated against.
* :mod:`.sign`: Ed25519 signatures (``sign_file``, ``verify_file``, ``generate_key``); a
  ``Runtime(..., public_key=KEY, require_signature=True)`` checks one before use.
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
        "ManifestError": "satc",
        "SignatureError": "satc",
        "load_artifact": "satc",
        "generate_key": "sign",
        "load_private_key": "sign",
        "load_public_key": "sign",
        "sign_file": "sign",
        "verify_file": "sign",
        "manifest_card": "satc",
        "ImageError": "images",
        "load_image": "images",
        "SceneError": "tiles",
        "predict_scene": "tiles",
        "tile_grid": "tiles",
        "make_session": "onnx",
    },
)
