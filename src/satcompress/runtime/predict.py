"""Classify images with a ``.satc`` file: numpy, onnx, ONNX Runtime and Pillow, no torch.

Example::

    from satcompress.runtime import Runtime

    model = Runtime("model.satc", threads=2)
    for label, probs in model.predict(["tile_001.jpg", "tile_002.jpg"]):
        print(label, probs.max())

The artifact is verified (magic, version, length, SHA-256, and its Ed25519 signature when a
public key is given) and validated (manifest schema, graph against manifest: see
:func:`satcompress.runtime.satc.load_artifact`), its ONNX graph rebuilt in memory and
opened in the saturation-safe ONNX Runtime session every figure of this project is
measured in (:func:`satcompress.runtime.onnx.make_session`). The graph takes raw uint8
``(B, 3, H, W)`` images at the card's decode size and normalises (and, for a model with its
own input resolution, resizes) inside; this module only decodes and resizes each image to
that size the way training decoded it (:mod:`satcompress.runtime.images`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from satcompress.runtime.images import ImageLike, load_image
from satcompress.runtime.onnx import ORT_ERRORS, make_session
from satcompress.runtime.satc import ArtifactError, load_artifact, manifest_card
from satcompress.runtime.saturation import make_saturation_safe, resolve_policy

__all__ = ["Prediction", "Runtime", "softmax"]


class Prediction(NamedTuple):
    """One image's label: the class name and the probabilities of every class.

    Unpacks as ``(label, probabilities)``; ``probability`` is the label's.
    """

    label: str
    probabilities: np.ndarray

    @property
    def probability(self) -> float:
        """The predicted class's probability."""
        return float(self.probabilities.max())

    @property
    def index(self) -> int:
        """The predicted class's index in :attr:`Runtime.classes`."""
        return int(self.probabilities.argmax())


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(B, C)`` logits, in float32, numerically stable."""
    shifted = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class Runtime:
    """A ``.satc`` classifier ready to predict.

    Args:
        path: The artifact file.
        threads: ONNX Runtime intra-op threads (default: all cores).
        int8_kernels: ``auto`` (default) re-encodes 8-bit weights that ONNX Runtime's int8
            kernels would saturate on this CPU; ``exact`` always, ``native`` never. See
            :mod:`satcompress.runtime.saturation`.
        public_key: Verify the file's Ed25519 signature with this public key (file, bytes
            or key; see :mod:`satcompress.runtime.sign`) before anything else is read.
        require_signature: Refuse an unsigned file (with ``public_key``).

    Attributes:
        path: The artifact file.
        manifest: Its manifest; ``card`` its model card.
        classes: Class names, in the model's output order.
        image_size: ``(height, width)`` every image is resized to before the graph.
        decode_seconds: Time taken to verify the file and rebuild its ONNX graph.
        session_seconds: Time taken to build the ONNX Runtime session.
        signature: The file's signature (``verified`` if ``public_key`` checked it), or None.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ArtifactError: If the file is not a valid artifact, its signature does not hold
            (``SignatureError``), ONNX Runtime refuses its graph, or its input size is
            unknown.
    """

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        int8_kernels: str = "auto",
        *,
        public_key: Any = None,
        require_signature: bool = False,
    ) -> None:
        start = time.perf_counter()
        artifact = load_artifact(path, public_key=public_key, require_signature=require_signature)
        self.path = Path(path)
        self.signature = artifact.signature
        self.manifest: dict[str, Any] = artifact.manifest
        self.card = manifest_card(self.manifest)
        rewritten = 0
        if resolve_policy(int8_kernels):  # x86 without VNNI: re-encode the 8-bit weights
            model = artifact.onnx_model()
            rewritten = make_saturation_safe(model)
            data = model.SerializeToString()
            del model
        else:  # the graph's bytes without importing onnx (see Artifact.onnx_bytes)
            data = artifact.onnx_bytes()
        # Peak memory: one copy of the graph at a time besides ONNX Runtime's own
        del artifact
        self.decode_seconds = time.perf_counter() - start
        start = time.perf_counter()
        try:
            self.session = make_session(data, threads, int8_kernels="native")
        except ORT_ERRORS as err:
            raise ArtifactError(
                f"{path}: ONNX Runtime refuses its graph: {_first_line(err)}"
            ) from None
        del data
        _release_freed_memory()
        self.session.satcompress_uint8_weights = rewritten
        self.session_seconds = time.perf_counter() - start
        graph_input = self.session.get_inputs()[0]
        self._input_name = graph_input.name
        self.image_size = _image_size(graph_input.shape, self.card, self.path)
        outputs = self.session.get_outputs()[0].shape
        self.classes = _classes(self.card, self.manifest, outputs)

    def __repr__(self) -> str:
        h, w = self.image_size
        return (
            f"Runtime({str(self.path)!r}: {self.card.get('model', 'model')}, "
            f"{len(self.classes)} classes, {h}x{w} uint8 input)"
        )

    def predict(self, images: Iterable[ImageLike], batch_size: int = 64) -> list[Prediction]:
        """Label images: paths, Pillow images or uint8 ``(H, W, 3)`` arrays.

        Each is decoded and resized to :attr:`image_size` as training did; at most
        ``batch_size`` decoded images are held at once.

        Raises:
            ImageError: If an image cannot be read (the message names the file).
        """
        return list(self.iter_predict(images, batch_size))

    def iter_predict(
        self, images: Iterable[ImageLike], batch_size: int = 64
    ) -> Iterator[Prediction]:
        """:meth:`predict`, yielding each prediction as its batch finishes."""
        batch: list[np.ndarray] = []
        for image in images:
            batch.append(load_image(image, self.image_size))
            if len(batch) == batch_size:
                yield from self.labels(self.predict_batch(np.stack(batch)))
                batch = []
        if batch:
            yield from self.labels(self.predict_batch(np.stack(batch)))

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities ``(B, C)`` of a uint8 batch already at :attr:`image_size`.

        Args:
            batch: ``(B, H, W, 3)`` (as decoded) or ``(B, 3, H, W)`` (the graph's layout).

        Raises:
            ValueError: If the batch is not uint8 at :attr:`image_size`.
        """
        return softmax(self.logits(batch))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The graph's raw output ``(B, C)`` for a batch (see :meth:`predict_batch`)."""
        h, w = self.image_size
        if batch.dtype != np.uint8 or batch.ndim != 4:
            raise ValueError(
                f"expected a uint8 (B, H, W, 3) batch, got {batch.dtype} {batch.shape}"
            )
        if batch.shape[1:] == (h, w, 3):
            batch = batch.transpose(0, 3, 1, 2)
        elif batch.shape[1:] != (3, h, w):
            raise ValueError(
                f"expected images of {h}x{w} (B, {h}, {w}, 3) or (B, 3, {h}, {w}), "
                f"got {batch.shape}"
            )
        feed = {self._input_name: np.ascontiguousarray(batch)}
        try:
            return self.session.run(None, feed)[0]
        except ORT_ERRORS as err:
            raise ArtifactError(
                f"{self.path}: its model fails to run: {_first_line(err)}"
            ) from None

    def labels(self, probabilities: np.ndarray) -> Iterator[Prediction]:
        """One :class:`Prediction` per row of ``(B, C)`` probabilities."""
        for row in probabilities:
            yield Prediction(self.classes[int(row.argmax())], row)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:500] if lines else type(err).__name__


def _release_freed_memory() -> None:
    """Hand the heap pages freed while building the session back to the system (glibc).

    ONNX Runtime's graph optimisations copy the weights (layout changes, folding) and free
    the originals; glibc keeps those pages resident. ``malloc_trim`` returns them: measured
    on the fp32 ResNet-18, 92 MB less resident memory, and a lower peak while predicting.
    Nothing happens where the C library has no ``malloc_trim`` (musl, macOS, Windows).
    """
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def _image_size(shape: Sequence[Any], card: dict[str, Any], path: Path) -> tuple[int, int]:
    """The graph input's (H, W) when fixed, else the card's decode size."""
    if len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[2:]):
        return int(shape[2]), int(shape[3])
    size = card.get("image_size") or (card.get("data") or {}).get("image_size")
    spec = card.get("input")
    size = size or (spec.get("size") if isinstance(spec, dict) else None)
    if isinstance(size, int):
        size = [size, size]
    if not size:
        raise ArtifactError(f"{path}: neither the graph nor the card gives the input image size")
    return int(size[0]), int(size[1])


def _classes(card: dict[str, Any], manifest: dict[str, Any], output: Sequence[Any]) -> list[str]:
    classes = card.get("classes") or (manifest.get("metadata") or {}).get("classes")
    if classes:
        return [str(c) for c in classes]
    count = output[-1] if output and isinstance(output[-1], int) else 0
    return [f"class_{i}" for i in range(count)]
