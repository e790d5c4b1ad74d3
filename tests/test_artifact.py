import hashlib
import json
import struct
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch

from satcompress.artifact.format import (
    HEADER,
    MAGIC,
    ArtifactError,
    ChecksumError,
    IncompatibleVersionError,
    NotAnArtifactError,
    TruncatedArtifactError,
    UnsupportedBitsError,
    artifact_format,
    load_artifact,
    write_artifact,
)
from satcompress.compress.quantize import QATConfig, calibrate, export_qat_onnx, prepare_qat
from satcompress.models import create_model
from satcompress.models.deployable import export_onnx
from satcompress.preprocess import InputSpec, Preprocess
from satcompress.runtime.onnx import make_session, run_session

SPEC = InputSpec(mean=(0.4, 0.5, 0.3), std=(0.2, 0.2, 0.25))


def _images(n=16, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def _prune(model, fraction):
    """Zero the smallest ``fraction`` of every Conv2d/Linear weight (unstructured)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                w = module.weight
                threshold = w.abs().flatten().kthvalue(int(fraction * w.numel())).values
                w[w.abs() <= threshold] = 0
    return model


def _qat_onnx(path, bits, width=16, prune=0.0, images=None):
    torch.manual_seed(0)
    model = create_model("test_cnn", 10, width=width).eval()
    if prune:
        _prune(model, prune)
    images = _images() if images is None else images
    x = Preprocess(SPEC)(torch.from_numpy(images))
    config = QATConfig(bits=bits, first_last="same", weight_scale="max")
    qat_model, layer_bits = prepare_qat(model, config, x[:2])
    calibrate(qat_model, [x])
    meta = {"model": "test_cnn", "classes": [str(i) for i in range(10)]}
    return export_qat_onnx(qat_model.eval(), SPEC, (32, 32), path, layer_bits, meta)


@pytest.fixture(scope="module")
def artifact_2bit(tmp_path_factory):
    folder = tmp_path_factory.mktemp("artifact")
    onnx_path, bits, layers = _qat_onnx(folder / "qat.onnx", 2)
    path = folder / "model.satc"
    write_artifact(onnx_path, path, bits=bits, layers=layers, info={"model": "test_cnn"})
    return onnx_path, path


def test_artifact_rebuilds_the_onnx_model_bit_exactly(artifact_2bit):
    onnx_path, path = artifact_2bit
    original = onnx.load(str(onnx_path))
    rebuilt = load_artifact(path).onnx_model()
    assert [n.SerializeToString() for n in rebuilt.graph.node] == [
        n.SerializeToString() for n in original.graph.node
    ]
    before = {t.name: onnx.numpy_helper.to_array(t) for t in original.graph.initializer}
    after = {t.name: onnx.numpy_helper.to_array(t) for t in rebuilt.graph.initializer}
    assert list(before) == list(after)
    for name, array in before.items():
        assert after[name].dtype == array.dtype and np.array_equal(after[name], array), name


def test_artifact_round_trips_in_a_fresh_process(artifact_2bit, tmp_path):
    onnx_path, path = artifact_2bit
    images = _images(24, seed=3)
    np.save(tmp_path / "images.npy", images)
    expected = run_session(make_session(onnx_path, 1), images)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from satcompress.artifact.format import load_artifact
        from satcompress.runtime.onnx import make_session, run_session
        artifact = load_artifact({str(path)!r})
        onnx_path = artifact.save_onnx({str(tmp_path / "rebuilt.onnx")!r})
        images = np.load({str(tmp_path / "images.npy")!r})
        np.save({str(tmp_path / "logits.npy")!r}, run_session(make_session(onnx_path, 1), images))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=900)
    logits = np.load(tmp_path / "logits.npy")
    assert np.array_equal(logits, expected)
    assert np.array_equal(logits.argmax(1), expected.argmax(1))


def test_manifest_describes_layers_bits_scales_and_input(artifact_2bit):
    _, path = artifact_2bit
    artifact = load_artifact(path)
    manifest = artifact.manifest
    assert manifest["format"] == "satcompress.artifact" and manifest["version"] == 1
    assert manifest["metadata"]["input_spec"] == SPEC.to_dict()
    weights = [t for t in manifest["tensors"] if t["role"] == "weight" and t["kind"] == "int"]
    assert {t["layer"] for t in weights} == {"0", "3", "6", "11"}
    assert all(t["bits"] == 2 and t["scale"] and t["axis"] == 0 for t in weights)
    assert {tuple(t["shape"]) for t in weights} >= {(16, 3, 3, 3), (10, 64)}
    assert artifact_format(manifest) == "artifact-int2"
    assert artifact.size_bytes == path.stat().st_size
    rows = artifact.layers()
    assert all({"bits", "sparsity", "bytes", "encoding"} <= set(r) for r in rows)


@pytest.mark.parametrize("bits", [8, 4, 3, 2, 1])
def test_artifact_size_is_within_10_percent_of_the_bound(tmp_path, bits):
    onnx_path, init_bits, layers = _qat_onnx(tmp_path / "qat.onnx", bits, width=96)
    manifest = write_artifact(onnx_path, tmp_path / "m.satc", bits=init_bits, layers=layers)
    bound = manifest["stats"]["bound_bytes"]
    assert bound > 50_000  # the weights, not the header, dominate
    assert manifest["size_bytes"] <= 1.10 * bound
    int8_onnx_bytes = onnx_path.stat().st_size  # its weights take a byte each
    assert manifest["size_bytes"] < int8_onnx_bytes * (bits + 1) / 8


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_pruned_artifact_is_smaller_than_dense_at_the_same_bits(tmp_path, bits):
    sizes = {}
    for prune in (0.0, 0.5):
        onnx_path, init_bits, _ = _qat_onnx(tmp_path / f"{prune}.onnx", bits, 64, prune)
        manifest = write_artifact(onnx_path, tmp_path / f"{prune}.satc", bits=init_bits)
        sizes[prune] = manifest["size_bytes"]
        if prune:
            weights = [t for t in manifest["tensors"] if t["role"] == "weight"]
            assert sum(t["nnz"] for t in weights) <= 0.55 * sum(t["count"] for t in weights)
    assert sizes[0.5] < sizes[0.0]


def test_fp32_artifact_stores_pruned_zeros_cheaply(tmp_path):
    sizes = {}
    for prune in (0.0, 0.7):
        torch.manual_seed(0)
        model = create_model("test_cnn", 10, width=32).eval()
        if prune:
            _prune(model, prune)
        onnx_path = export_onnx(model, SPEC, (32, 32), tmp_path / f"{prune}.onnx")
        sizes[prune] = write_artifact(onnx_path, tmp_path / f"{prune}.satc")["size_bytes"]
        artifact = load_artifact(tmp_path / f"{prune}.satc")
        assert artifact_format(artifact.manifest) == "artifact-fp32"
        rebuilt = artifact.save_onnx(tmp_path / f"{prune}_rt.onnx")
        images = _images(4)
        assert np.array_equal(
            run_session(make_session(rebuilt, 1), images),
            run_session(make_session(onnx_path, 1), images),
        )
    assert sizes[0.7] < 0.6 * sizes[0.0]


# --- bad files: clear errors, never a silent wrong answer -----------------------------------


@pytest.fixture
def artifact_bytes(artifact_2bit):
    return artifact_2bit[1].read_bytes()


def _write(tmp_path, data, name="bad.satc"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("keep", [0.0, 0.001, 0.3, 0.7, 0.999])
def test_truncated_file_is_refused(tmp_path, artifact_bytes, keep):
    size = max(1, int(len(artifact_bytes) * keep)) if keep else 4
    path = _write(tmp_path, artifact_bytes[:size])
    with pytest.raises(TruncatedArtifactError, match="truncated"):
        load_artifact(path)


@pytest.mark.parametrize("where", [0.2, 0.5, 0.9, -1])
def test_tampered_byte_fails_the_checksum(tmp_path, artifact_bytes, where):
    data = bytearray(artifact_bytes)
    index = len(data) - 1 if where == -1 else HEADER.size + int((len(data) - HEADER.size) * where)
    data[index] ^= 0x01
    with pytest.raises(ChecksumError, match="SHA-256"):
        load_artifact(_write(tmp_path, bytes(data)))


def test_incompatible_version_is_refused(tmp_path, artifact_bytes):
    data = bytearray(artifact_bytes)
    struct.pack_into("<H", data, len(MAGIC), 2)
    with pytest.raises(IncompatibleVersionError, match="version 2.*reads version 1"):
        load_artifact(_write(tmp_path, bytes(data)))


def test_manifest_version_is_checked_too(tmp_path, artifact_bytes):
    _, version, flags, mlen, plen = HEADER.unpack_from(artifact_bytes)
    manifest = json.loads(artifact_bytes[HEADER.size : HEADER.size + mlen])
    manifest["version"] = 99
    text = json.dumps(manifest).encode()
    payload = artifact_bytes[HEADER.size + mlen : HEADER.size + mlen + plen]
    body = HEADER.pack(MAGIC, version, flags, len(text), plen) + text + payload
    path = _write(tmp_path, body + hashlib.sha256(body).digest())
    with pytest.raises(IncompatibleVersionError, match="version 99"):
        load_artifact(path)


def test_other_files_and_trailing_bytes_are_refused(tmp_path, artifact_bytes, artifact_2bit):
    with pytest.raises(NotAnArtifactError, match="not a satcompress artifact"):
        load_artifact(artifact_2bit[0])  # an ONNX file
    with pytest.raises(ArtifactError, match="unexpected bytes"):
        load_artifact(_write(tmp_path, artifact_bytes + b"\x00"))
    with pytest.raises(FileNotFoundError):
        load_artifact(tmp_path / "missing.satc")


def test_unsupported_or_wrong_bit_widths_are_refused_when_writing(tmp_path, artifact_2bit):
    onnx_path, _ = artifact_2bit
    model = onnx.load(str(onnx_path))
    tensor = next(
        t
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4
    )
    values = onnx.numpy_helper.to_array(tensor).copy()
    values.flat[0] = 100  # an 8-bit value
    tensor.CopyFrom(onnx.numpy_helper.from_array(values, tensor.name))
    with pytest.raises(UnsupportedBitsError, match="unsupported bit-width 9"):
        write_artifact(model, tmp_path / "a.satc", bits={tensor.name: 9})
    with pytest.raises(UnsupportedBitsError, match=f"{tensor.name}.*do not fit 2-bit"):
        write_artifact(model, tmp_path / "a.satc", bits={tensor.name: 2})
    with pytest.raises(ArtifactError, match="not in the model"):
        write_artifact(model, tmp_path / "a.satc", bits={"nope": 4})
    assert not (tmp_path / "a.satc").exists()
    assert write_artifact(model, tmp_path / "b.satc", bits={tensor.name: 8})["size_bytes"] > 0
