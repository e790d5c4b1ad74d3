"""Fuzzing the ``.satc`` reader: whatever the bytes, it refuses with an ``ArtifactError``.

Valid tiny artifacts (``tiny_artifact.py``: every storage kind, signed and unsigned) are
mutated with a fixed seed: bit flips, truncations, extensions and header fields (checksum
left stale, then recomputed), and manifest edits (keys deleted, values of other types, huge,
negative and fractional numbers, wrong dtypes and shapes, tensors deleted or duplicated,
consistent dtype and shape changes) with the header lengths and the SHA-256 recomputed, so
that the validation behind the checksum is what answers. Each case is read as a device
would (``load_artifact``, every tensor decoded, and, if all of it was accepted, an ONNX
Runtime session run on a batch). A case passes if it is accepted or refused with an
``ArtifactError``; any other exception fails the test with the case that raised it. Each
case has a time bound, and the process's peak memory may grow only a little.
"""

from __future__ import annotations

import copy
import faulthandler
import hashlib
import json
import math
import random
import resource
import signal
import struct
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from satcompress.runtime import Runtime, generate_key, sign_file
from satcompress.runtime.errors import ArtifactError, ManifestError, SignatureError
from satcompress.runtime.satc import HEADER, SIGNATURE_SIZE, load_artifact
from satcompress.runtime.schema import MANIFEST_SCHEMA, validate
from tiny_artifact import SIDE, write_tiny_artifact

SEED = 20261206
FAST_CASES = 1000
SLOW_CASES = 20000
#: Most seconds one case may take (a tiny file: a few milliseconds normally).
CASE_SECONDS = 5.0
#: Most the process's peak resident memory may grow over a whole run.
RSS_GROWTH_BYTES = 300 * 2**20
BATCH = np.zeros((2, SIDE, SIDE, 3), np.uint8)


class CaseTimeout(BaseException):
    """A case ran past :data:`CASE_SECONDS` (BaseException: no ``except Exception`` eats it)."""


# --- the files -------------------------------------------------------------------------------


class Parts:
    """An artifact's pieces, reassembled with the header lengths and checksum recomputed."""

    def __init__(self, blob: bytes) -> None:
        _, self.version, self.flags, mlen, plen = HEADER.unpack_from(blob)
        self.manifest = json.loads(blob[HEADER.size : HEADER.size + mlen])
        self.payload = blob[HEADER.size + mlen : HEADER.size + mlen + plen]
        self.block = blob[HEADER.size + mlen + plen + 32 :]

    def assemble(self, text: bytes | None = None) -> bytes:
        if text is None:
            text = json.dumps(self.manifest, separators=(",", ":")).encode()
        header = HEADER.pack(b"SATCART\x00", self.version, self.flags, len(text), len(self.payload))
        body = header + text + self.payload
        return body + hashlib.sha256(body).digest() + self.block


def with_checksum(blob: bytes) -> bytes:
    """``blob`` with its SHA-256 recomputed where its header says the checksum lies."""
    if len(blob) < HEADER.size:
        return blob
    _, _, _, mlen, plen = HEADER.unpack_from(blob)
    end = HEADER.size + mlen + plen
    if end + 32 > len(blob):
        return blob
    return blob[:end] + hashlib.sha256(blob[:end]).digest() + blob[end + 32 :]


@pytest.fixture(autouse=True)
def _quiet_onnx_runtime():
    """ONNX Runtime logs each refused graph on stderr besides raising: hundreds of lines."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)
    yield
    onnxruntime.set_default_logger_severity(2)


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """The tiny artifact unsigned and signed, and the public key that verifies the latter."""
    folder = tmp_path_factory.mktemp("fuzz")
    unsigned = write_tiny_artifact(folder / "tiny.satc")
    private, public = generate_key(folder / "key")
    signed = folder / "signed.satc"
    sign_file(unsigned, private, output=signed)
    return {"unsigned": unsigned.read_bytes(), "signed": signed.read_bytes(), "key": public}


# --- mutations -------------------------------------------------------------------------------

EVIL = [
    None, True, False, 0, 1, -1, 7, 2**31, 2**63, 2**64 + 1, 10**30, -(10**30), 1.5, -0.0,
    1e308, "", "x", "float", "int8", "uint8", "int64", "double", "bfloat16", "<f4", "|i1",
    "lzma", "sparse", "dense", "weight", [], [0], [-1], [2**40, 2**40], [1.5], ["a"], {},
    {"bits": 2}, {"a": [1, {"b": None}]},
]  # fmt: skip
DTYPES = ["float", "double", "int8", "uint8", "int32", "int64", "bool", "float16", "string"]


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a JSON value (the root excluded)."""
    if not isinstance(value, (dict, list)):
        return []
    found = []
    for key, child in value.items() if isinstance(value, dict) else enumerate(value):
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


def _parent(root: Any, path: tuple) -> Any:
    for key in path[:-1]:
        root = root[key]
    return root


def _new_value(rng: random.Random, old: Any) -> Any:
    """A replacement: another type, an extreme or nearby number, another dtype or shape."""
    choice = rng.random()
    if isinstance(old, bool) or choice < 0.45:
        return copy.deepcopy(rng.choice(EVIL))
    if isinstance(old, int):
        return rng.choice([old + 1, old - 1, -old, old * 1000, old + 2**32, 0, -1, float(old)])
    if isinstance(old, str):
        return rng.choice([*DTYPES, old + "x", old.upper(), "none", "lzma", "sparse"])
    if isinstance(old, list):
        new = copy.deepcopy(old)
        operation = rng.randrange(4)
        if operation == 0:
            new.append(rng.choice([1, 0, 3, 2**20]))
        elif operation == 1 and new:
            new.pop(rng.randrange(len(new)))
        elif operation == 2:
            rng.shuffle(new)
        else:
            new = new[::-1]
        return new
    return copy.deepcopy(rng.choice(EVIL))


def mutate_field(rng: random.Random, manifest: dict) -> str:
    """Delete or replace one value anywhere in the manifest; what was done."""
    paths = _paths(manifest)
    if not paths:
        manifest["tensors"] = rng.choice(EVIL)
        return "set tensors of an empty manifest"
    path = rng.choice(paths)
    parent = _parent(manifest, path)
    if rng.random() < 0.25:
        del parent[path[-1]]
        return f"delete {path}"
    parent[path[-1]] = _new_value(rng, parent[path[-1]])
    return f"set {path}"


def mutate_tensors(rng: random.Random, manifest: dict) -> str:
    """Whole-entry edits, and changes that keep an entry consistent in itself."""
    tensors = manifest.get("tensors")
    entries = []
    if isinstance(tensors, list):
        entries = [i for i, t in enumerate(tensors) if isinstance(t, dict)]
    if not entries:  # an earlier edit left no entry to work on
        return mutate_field(rng, manifest)
    i = rng.choice(entries)
    entry = tensors[i]
    operation = rng.randrange(6)
    if operation == 0:
        del tensors[i]
        return f"drop tensor {i}"
    if operation == 1:
        tensors.append(copy.deepcopy(entry))
        return f"duplicate tensor {i}"
    if operation == 2:
        j = rng.choice(entries)
        for key in ("offset", "length"):
            entry[key], tensors[j][key] = tensors[j].get(key), entry.get(key)
        return f"swap storage of tensors {i} and {j}"
    if operation == 3 and entry.get("kind") == "raw":  # same item size, another type
        entry.update(dtype="int32", numpy_dtype="<i4") if entry.get("bits") == 32 else None
        return f"consistent dtype change of tensor {i}"
    if operation == 4 and isinstance(entry.get("shape"), list):
        entry["shape"] = entry["shape"][::-1] or [1]  # the same count, another layout
        return f"reversed shape of tensor {i}"
    entry["count"] = entry["nnz"] = 10**12 if rng.random() < 0.5 else 2**31
    entry["shape"] = [entry["count"]]
    return f"huge consistent tensor {i}"


def mutate_bytes(rng: random.Random, blob: bytes) -> tuple[bytes, str]:
    """Flips, truncations, extensions and header edits, the checksum stale or recomputed."""
    data = bytearray(blob)
    operation = rng.randrange(5)
    if operation == 0:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        what = "bit flips"
    elif operation == 1:
        data = data[: rng.randrange(len(data))]
        what = "truncated"
    elif operation == 2:
        data += bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, SIGNATURE_SIZE, 999])))
        what = "extended"
    elif operation == 3:
        field = rng.choice([(8, "<H"), (10, "<H"), (12, "<I"), (16, "<Q")])
        limit = 1 << (8 * struct.calcsize(field[1]))
        struct.pack_into(field[1], data, field[0], rng.choice([0, 1, 2, 3, limit - 1, 77]))
        what = f"header field at {field[0]}"
    else:
        start = HEADER.size + rng.randrange(max(1, len(data) - HEADER.size - 32))
        data[start] = rng.randrange(256)
        what = "byte set"
    if rng.random() < 0.5:
        return with_checksum(bytes(data)), what + ", checksum recomputed"
    return bytes(data), what


def mutate_manifest_text(rng: random.Random, parts: Parts) -> tuple[bytes, str]:
    """The manifest replaced by JSON of another shape, deep nesting or invalid UTF-8."""
    texts = [
        b"[]", b"5", b'"x"', b"null", b"{}", b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000, b"\xff\xfe", b'{"version": 1e999}',
        b'{"format": "satcompress.artifact", "version": 1, "tensors": ' + b"9" * 5000 + b"}",
    ]  # fmt: skip
    return parts.assemble(rng.choice(texts)), "manifest text replaced"


def make_case(rng: random.Random, originals: dict) -> tuple[bytes, str, bool]:
    """A mutated file, what was done, and whether to verify it with the public key."""
    signed = rng.random() < 0.3
    blob = originals["signed" if signed else "unsigned"]
    verify = signed and rng.random() < 0.5
    kind = rng.random()
    if kind < 0.35:
        data, what = mutate_bytes(rng, blob)
        return data, what, verify
    parts = Parts(blob)
    if kind < 0.38:
        data, what = mutate_manifest_text(rng, parts)
        return data, what, verify
    done = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        mutate = mutate_tensors if rng.random() < 0.3 else mutate_field
        done.append(mutate(rng, parts.manifest))
    return parts.assemble(), "; ".join(done), verify


# --- reading a case --------------------------------------------------------------------------


def attempt(path: Path, public_key: Path | None) -> str:
    """Read the file as a device would; "accepted", or the ArtifactError class refusing it."""
    try:
        artifact = load_artifact(path, public_key=public_key)
        artifact.onnx_bytes()  # every tensor decoded
        del artifact
        runtime = Runtime(path, threads=1, public_key=public_key)
        assert runtime.predict_batch(BATCH).shape[0] == len(BATCH)
    except ArtifactError as err:
        if "ONNX Runtime" in str(err) or "fails to run" in str(err):
            return "refused by ONNX Runtime"
        return type(err).__name__
    return "accepted"


def _on_alarm(signum, frame):
    raise CaseTimeout


def fuzz(originals: dict, folder: Path, cases: int, seed: int = SEED) -> Counter:
    """Run ``cases`` mutations; the outcomes counted. Fails on any other exception."""
    rng = random.Random(seed)
    path = folder / "case.satc"
    outcomes: Counter = Counter()
    slowest = 0.0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    faulthandler.dump_traceback_later(CASE_SECONDS * 4, repeat=True)  # a hang in C code
    try:
        for case in range(cases):
            data, what, verify = make_case(rng, originals)
            path.write_bytes(data)
            start = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
            try:
                outcome = attempt(path, originals["key"] if verify else None)
            except CaseTimeout:
                pytest.fail(f"case {case} ({what}) took more than {CASE_SECONDS} s")
            except Exception as err:  # the finding: report the case that raised it
                raise AssertionError(f"case {case} ({what}) raised {err!r}") from err
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            slowest = max(slowest, time.perf_counter() - start)
            if verify and data != originals["signed"]:
                assert outcome != "accepted", f"case {case} ({what}): altered, yet it verified"
            outcomes[outcome] += 1
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    assert growth < RSS_GROWTH_BYTES, f"peak memory grew {growth / 2**20:.0f} MiB"
    assert slowest < CASE_SECONDS
    return outcomes


def _check_outcomes(outcomes: Counter, cases: int) -> None:
    refused = cases - outcomes["accepted"]
    assert outcomes["accepted"] > 0.02 * cases, outcomes  # harmless edits stay readable
    assert refused > 0.5 * cases, outcomes
    # the checks behind the checksum are what answer the recomputed-checksum cases
    assert outcomes["ManifestError"] + outcomes["GraphError"] > 0.2 * cases, outcomes
    assert outcomes["ChecksumError"] > 0.05 * cases, outcomes
    assert outcomes["SignatureError"] > 0, outcomes


def test_fuzzed_artifacts_are_refused_with_artifact_errors_only(originals, tmp_path):
    outcomes = fuzz(originals, tmp_path, FAST_CASES)
    _check_outcomes(outcomes, FAST_CASES)


@pytest.mark.slow
def test_fuzzed_artifacts_long_run(originals, tmp_path):
    outcomes = fuzz(originals, tmp_path, SLOW_CASES, seed=SEED + 1)
    _check_outcomes(outcomes, SLOW_CASES)


# --- targeted cases --------------------------------------------------------------------------


def _edited(tmp_path, originals, edit, name="edited.satc") -> Path:
    parts = Parts(originals["unsigned"])
    edit(parts.manifest)
    path = tmp_path / name
    path.write_bytes(parts.assemble())
    return path


def _tensor(manifest, name):
    return next(t for t in manifest["tensors"] if t["name"] == name)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("tensors"), r"manifest\.tensors: required key is missing"),
        (lambda m: m["tensors"][3].update(dtype="float128"),
         r"manifest\.tensors\[3\]\.dtype: expected one of 'float', .*got 'float128'"),
        (lambda m: m["tensors"][0].update(dtype="int32"),
         r"manifest\.tensors\[0\]\.numpy_dtype: dtype 'int32' is stored as <i4 or >i4"),
        (lambda m: m["tensors"][4].update(bits=0),
         r"manifest\.tensors\[4\]\.bits: expected at least 1, got 0"),
        (lambda m: m["tensors"][4]["levels"].update(lo=-3),
         r"manifest\.tensors\[4\]\.levels: int8 at 2 bits stores"),
        (lambda m: m["tensors"][4].update(shape=[4, 3, 3, 4]),
         r"manifest\.tensors\[4\]\.count: 108 is not the product of shape"),
        (lambda m: m["tensors"][1].update(offset=10**9),
         r"manifest\.tensors\[1\]: bytes .* lie outside the \d+-byte payload"),
        (lambda m: m["tensors"][1].update(offset=-1),
         r"manifest\.tensors\[1\]\.offset: expected at least 0, got -1"),
        (lambda m: m["tensors"][0].update(length=13),
         r"manifest\.tensors\[0\]\.length: 13 bytes, but 3 elements stored dense take 12"),
        (lambda m: m["stats"].update(params=1),
         r"manifest\.stats\.params: 1 disagrees with the tensors"),
        (lambda m: m["card"].update(classes="abc"),
         r"manifest\.card\.classes: expected array or null, got 'abc'"),
        (lambda m: m["card"].update(image_size=[10**6, 8]),
         r"manifest\.card\.image_size\[0\]: expected at most 16384"),
        (lambda m: m["tensors"].append(copy.deepcopy(m["tensors"][2])),
         r"manifest\.tensors\[14\]\.name: 'act_scale' is also tensors\[2\]"),
    ],
)  # fmt: skip
def test_each_manifest_violation_names_its_key(tmp_path, originals, edit, message):
    path = _edited(tmp_path, originals, edit)
    with pytest.raises(ManifestError, match=message):
        load_artifact(path)


def test_the_graph_is_checked_against_the_tensors(tmp_path, originals):
    def drop_conv_weight(m):
        m["tensors"] = [t for t in m["tensors"] if t["name"] != "conv2.w"]
        m["stats"] = _stats_of(m["tensors"])

    with pytest.raises(ManifestError, match=r"no tensor 'conv2\.w', which node 'conv2' \(Conv\)"):
        load_artifact(_edited(tmp_path, originals, drop_conv_weight))

    def int32_mean(m):  # consistent in itself: only the graph shows it is wrong
        _tensor(m, "mean").update(dtype="int32", numpy_dtype="<i4")

    with pytest.raises(ManifestError, match=r"tensors\[0\]\.dtype: 'int32' does not fit the graph"):
        load_artifact(_edited(tmp_path, originals, int32_mean))

    def int32_shape(m):
        _tensor(m, "shape").update(dtype="int32", numpy_dtype="<i4", bits=32, count=4, nnz=4,
                                   shape=[4])  # fmt: skip
        m["stats"] = _stats_of(m["tensors"])

    with pytest.raises(
        ManifestError, match=r"tensors\[9\]\.dtype: 'int32' .*\(Reshape\) takes int64"
    ):
        load_artifact(_edited(tmp_path, originals, int32_shape))


def _stats_of(tensors):
    from satcompress.runtime.schema import manifest_stats

    return manifest_stats(tensors)


def test_a_decompression_bomb_is_refused_before_it_is_decompressed(tmp_path, originals):
    """An LZMA stream of 80 MiB of zeros (~12 kB) declared as one tensor: refused unread."""
    import lzma

    count = 80 * 2**20
    fast = [{"id": lzma.FILTER_LZMA2, "preset": 0}]  # the reader's larger dictionary reads it
    bomb = lzma.compress(bytes(count), format=lzma.FORMAT_RAW, filters=fast)
    parts = Parts(originals["unsigned"])
    entry = _tensor(parts.manifest, "conv2.w")
    entry.update(shape=[count // 4], count=count // 4, nnz=0, offset=len(parts.payload),
                 length=len(bomb))  # fmt: skip
    parts.payload += bomb
    parts.manifest["stats"] = _stats_of(parts.manifest["tensors"])
    path = tmp_path / "bomb.satc"
    path.write_bytes(parts.assemble())
    tracemalloc.start()
    try:
        with pytest.raises(ManifestError, match="decompression bomb"):
            load_artifact(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20  # the file is ~20 kB: nothing near 80 MiB was allocated


def test_an_lzma_stream_longer_than_declared_is_cut_at_the_declared_size():
    import lzma

    from satcompress.runtime.pack import _LZMA_FILTERS, decompress_lzma

    data = lzma.compress(bytes(10**6), format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    with pytest.raises(ValueError, match="more than the 1000 bytes"):
        decompress_lzma(data, 1000, _LZMA_FILTERS)
    assert decompress_lzma(data, 10**6, _LZMA_FILTERS) == bytes(10**6)


def test_onnx_runtime_refusals_are_artifact_errors(tmp_path, originals):
    """A consistent change no static check can see (a bias of 3 values for 4 channels)."""

    def short_bias(m):
        _tensor(m, "conv1.b").update(shape=[3], count=3, nnz=1, encoding="dense",
                                     compression="none", length=12)  # fmt: skip
        m["stats"] = _stats_of(m["tensors"])

    path = _edited(tmp_path, originals, short_bias)
    with pytest.raises(ArtifactError, match="ONNX Runtime|fails to run"):
        Runtime(path, threads=1).predict_batch(BATCH)


def test_the_schema_is_json_schema_and_jsonschema_agrees(originals):
    """The maintained ``jsonschema`` accepts the document and judges 300 manifests alike."""
    jsonschema = pytest.importorskip("jsonschema")
    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine_many(
        {
            "integer": lambda _, v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda _, v: isinstance(v, int) and not isinstance(v, bool)
            or isinstance(v, float) and math.isfinite(v),
        }
    )  # fmt: skip
    base.check_schema(MANIFEST_SCHEMA)
    validator = jsonschema.validators.extend(base, type_checker=checker)(MANIFEST_SCHEMA)
    rng = random.Random(SEED)
    agreed = Counter()
    for _ in range(300):
        manifest = Parts(originals["unsigned"]).manifest
        for _ in range(rng.choice([0, 1, 1, 2])):
            mutate_field(rng, manifest)
        try:
            validate(manifest, MANIFEST_SCHEMA)
            ours = True
        except ManifestError:
            ours = False
        assert validator.is_valid(manifest) == ours, manifest
        agreed[ours] += 1
    assert agreed[True] > 20 and agreed[False] > 20


def test_signed_file_bytes_are_all_covered(originals):
    """Every byte before the block is signed: flipping any one of a sample is refused."""
    rng = random.Random(SEED)
    signed = originals["signed"]
    for _ in range(40):
        data = bytearray(signed)
        data[rng.randrange(len(signed) - SIGNATURE_SIZE)] ^= 0x10
        with pytest.raises(ArtifactError):
            _load_bytes(with_checksum(bytes(data)), originals["key"])


def _load_bytes(data: bytes, key):
    from satcompress.runtime.satc import parse_artifact

    return parse_artifact(data, "case", public_key=key)


def test_signature_errors_are_raised_for_a_stripped_or_forged_block(originals):
    signed = originals["signed"]
    with pytest.raises(ArtifactError, match="truncated: its header says it is signed"):
        _load_bytes(signed[:-SIGNATURE_SIZE], None)
    forged = signed[:-64] + bytes(64)
    with pytest.raises(SignatureError, match="does not verify"):
        _load_bytes(forged, originals["key"])
    assert _load_bytes(forged, None).signature.verified is False  # no key: not checked
