"""Signed artifacts (Ed25519) and honest quantize/inspect output, through the API and the CLI.

A signed ``.satc`` verifies with its public key; one altered byte, another key, or no
signature where one is required is refused, on the command line with exit status 2 and one
line naming the file, never a traceback.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from satcompress.cli import main
from satcompress.runtime import Runtime, generate_key, sign_file, verify_file
from satcompress.runtime.cli import main as runtime_main
from satcompress.runtime.errors import ArtifactError, SignatureError
from satcompress.runtime.satc import FLAG_SIGNED, HEADER, SIGNATURE_SIZE, load_artifact
from satcompress.runtime.sign import KeyFileError, key_id, load_private_key
from tiny_artifact import SIDE, tiny_model, write_tiny_artifact


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return generate_key(folder / "ground"), generate_key(folder / "other")


@pytest.fixture
def unsigned(tmp_path):
    return write_tiny_artifact(tmp_path / "model.satc")


@pytest.fixture
def signed(tmp_path, unsigned, keys):
    path = tmp_path / "signed.satc"
    sign_file(unsigned, keys[0][0], output=path)
    return path


def _flip(path, index):
    data = bytearray(path.read_bytes())
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


def _recompute_checksum(path):
    data = bytearray(path.read_bytes())
    _, _, _, mlen, plen = HEADER.unpack_from(data)
    end = HEADER.size + mlen + plen
    data[end : end + 32] = hashlib.sha256(data[:end]).digest()
    path.write_bytes(bytes(data))


# --- the API ---------------------------------------------------------------------------------


def test_keygen_writes_an_owner_only_private_key_and_never_overwrites(tmp_path):
    private, public = generate_key(tmp_path / "k")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public == tmp_path / "k.pub" and b"BEGIN PUBLIC KEY" in public.read_bytes()
    assert b"BEGIN PRIVATE KEY" in private.read_bytes()
    before = private.read_bytes()
    with pytest.raises(KeyFileError, match="exists; refusing to overwrite"):
        generate_key(tmp_path / "k")
    assert private.read_bytes() == before


def test_a_signed_file_verifies_and_holds_no_private_key(unsigned, signed, keys):
    (private, public), _ = keys
    signature = verify_file(signed, public)
    assert signature.verified and signature.algorithm == "ed25519"
    assert signature.key_id == key_id(public)
    data, plain = signed.read_bytes(), unsigned.read_bytes()
    assert len(data) == len(plain) + SIGNATURE_SIZE
    assert HEADER.unpack_from(data)[2] == FLAG_SIGNED and HEADER.unpack_from(plain)[2] == 0
    assert data[24 : len(plain) - 32] == plain[24:-32]  # manifest and payload untouched
    raw = load_private_key(private).private_bytes_raw()
    assert raw not in data
    # without a key a signed file reads like any other (the SHA-256 still guards it)
    assert load_artifact(signed).signature.verified is False


@pytest.mark.parametrize("where", ["header", "manifest", "payload", "checksum", "signature"])
def test_any_altered_byte_is_refused(signed, keys, where):
    size = signed.stat().st_size
    index = {"header": 11, "manifest": 40, "payload": size - 500, "checksum": size - 120,
             "signature": size - 5}[where]  # fmt: skip
    _flip(signed, index)
    if where in ("manifest", "payload"):
        _recompute_checksum(signed)  # so that only the signature can tell
    with pytest.raises(ArtifactError):
        verify_file(signed, keys[0][1])


def test_unsigned_or_other_key_refused_and_resigning_replaces(unsigned, signed, keys):
    (_, public), (other_private, other_public) = keys
    with pytest.raises(SignatureError, match="not signed"):
        verify_file(unsigned, public)
    assert load_artifact(unsigned, public_key=public).signature is None  # not required
    with pytest.raises(SignatureError, match="signed by another key"):
        verify_file(signed, other_public)
    sign_file(signed, other_private)
    assert signed.stat().st_size == unsigned.stat().st_size + SIGNATURE_SIZE
    assert verify_file(signed, other_public).verified
    with pytest.raises(SignatureError, match="signed by another key"):
        verify_file(signed, public)


def test_keys_of_the_wrong_kind_are_named(tmp_path, signed, keys):
    (private, _), _ = keys
    with pytest.raises(KeyFileError, match="is a private key; verify with its public key"):
        verify_file(signed, private)
    with pytest.raises(KeyFileError, match="no key file at"):
        verify_file(signed, tmp_path / "missing.pub")
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(KeyFileError, match="not a readable public key"):
        verify_file(signed, tmp_path / "junk.pub")


def test_an_encrypted_key_needs_its_passphrase(tmp_path, unsigned):
    private, public = generate_key(tmp_path / "enc", passphrase=b"correct horse")
    assert b"ENCRYPTED" in private.read_bytes()
    with pytest.raises(KeyFileError, match="SATCOMPRESS_KEY_PASSPHRASE"):
        sign_file(unsigned, private)
    sign_file(unsigned, private, passphrase=b"correct horse")
    assert verify_file(unsigned, public).verified


def test_runtime_verifies_before_it_predicts(signed, unsigned, keys):
    (_, public), (_, other) = keys
    model = Runtime(signed, threads=1, public_key=public, require_signature=True)
    assert model.signature.verified
    assert model.predict_batch(np.zeros((1, SIDE, SIDE, 3), np.uint8)).shape == (1, 3)
    with pytest.raises(SignatureError):
        Runtime(signed, threads=1, public_key=other)
    with pytest.raises(SignatureError, match="not signed"):
        Runtime(unsigned, threads=1, public_key=public, require_signature=True)
    with pytest.raises(ValueError, match="needs the public key"):
        Runtime(unsigned, threads=1, require_signature=True)


NO_CRYPTOGRAPHY = """
import sys
sys.modules["cryptography"] = None  # a device without it
from satcompress.runtime.cli import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m.startswith("cryptography") and sys.modules[m]]
raise SystemExit(code)
"""


def test_the_runtime_reads_signed_files_without_cryptography(signed, keys):
    run = [sys.executable, "-c", NO_CRYPTOGRAPHY, "info", str(signed)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "signed (ed25519" in done.stdout and "not verified" in done.stdout
    done = subprocess.run([*run, "--verify", str(keys[0][1])], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "pip install 'cryptography>=42'" in done.stderr


# --- the command lines -----------------------------------------------------------------------


def _run(argv, capsys, entry=main):
    code = entry([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _refused(code, err, *words):
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err


def test_cli_keygen_export_sign_inspect_verify(tmp_path, capsys):
    key = tmp_path / "keys" / "ground"
    code, out, _ = _run(["keygen", "--out", key], capsys)
    assert code == 0 and "keep it off the device" in out and "key id" in out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    _refused(*_run(["keygen", "--out", key], capsys)[::2], "exists")

    onnx_path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), onnx_path)
    model = tmp_path / "model.satc"
    code, out, err = _run(["export", "--onnx", onnx_path, "--output", model, "--sign", key],
                          capsys)  # fmt: skip
    assert code == 0, err
    assert f"signed {model}" in out and "signature: signed (ed25519" in out
    pub = f"{key}.pub"
    code, out, err = _run(["inspect", model, "--verify", pub, "--require-signature"], capsys)
    assert code == 0 and "verified" in out and not err

    unsigned = tmp_path / "unsigned.satc"
    code, _, err = _run(["export", "--onnx", onnx_path, "--output", unsigned], capsys)
    assert code == 0, err
    _refused(*_run(["inspect", unsigned, "--verify", pub, "--require-signature"], capsys)[::2],
             str(unsigned), "not signed")  # fmt: skip
    code, out, err = _run(["inspect", unsigned, "--verify", pub], capsys)  # warned, used
    assert code == 0 and "warning" in err and "not signed" in err
    _refused(*_run(["inspect", unsigned, "--require-signature"], capsys)[::2], "needs --verify")
    code, _, err = _run(["sign", unsigned, "--key", key], capsys)
    assert code == 0 and verify_file(unsigned, pub).verified

    other = tmp_path / "other"
    generate_key(other)
    _refused(*_run(["inspect", model, "--verify", f"{other}.pub"], capsys)[::2],
             "signed by another key")  # fmt: skip
    altered = tmp_path / "altered.satc"
    shutil.copy(model, altered)
    _flip(altered, 60)
    _recompute_checksum(altered)
    _refused(*_run(["inspect", altered, "--verify", pub], capsys)[::2], "does not verify")
    _refused(*_run(["eval", "--artifact", unsigned.with_name("x.satc"), "--require-signature",
                    "--verify", pub], capsys)[::2], "no artifact file")  # fmt: skip
    _refused(*_run(["export", "--onnx", onnx_path, "--output", tmp_path / "n.satc", "--sign",
                    tmp_path / "nokey"], capsys)[::2], "no key file at")  # fmt: skip
    assert not (tmp_path / "n.satc").exists()  # the key is checked before anything is written


def test_cli_eval_refuses_an_unsigned_artifact_before_loading_data(tmp_path, unsigned, keys,
                                                                   capsys):  # fmt: skip
    pub = keys[0][1]
    argv = ["eval", "--artifact", unsigned, "--verify", pub, "--require-signature"]
    _refused(*_run(argv, capsys)[::2], "not signed")
    _refused(*_run(["eval", "--checkpoint", tmp_path, "--verify", pub], capsys)[::2],
             "give it with --artifact")  # fmt: skip


def test_device_cli_verifies(tmp_path, signed, unsigned, keys, capsys):
    (_, public), (_, other) = keys
    image = tmp_path / "tile.png"
    Image.fromarray(np.full((SIDE, SIDE, 3), 90, np.uint8)).save(image)
    argv = ["predict", signed, image, "--verify", public, "--require-signature"]
    code, out, err = _run(argv, capsys, runtime_main)
    assert code == 0 and str(image) in out, err
    code, out, _ = _run(["info", signed, "--verify", public], capsys, runtime_main)
    assert code == 0 and "signature: signed (ed25519" in out and "verified" in out
    for argv, words in [
        (["predict", unsigned, image, "--verify", public, "--require-signature"], ["not signed"]),
        (["info", signed, "--verify", other], ["signed by another key"]),
        (["export-onnx", unsigned, tmp_path / "m.onnx", "--require-signature"], ["--verify"]),
    ]:
        _refused(*_run(argv, capsys, runtime_main)[::2], *words)
    code, _, err = _run(["info", unsigned, "--verify", public], capsys, runtime_main)
    assert code == 0 and "warning" in err


# --- honest quantize and inspect output ------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--method", "ptq", "--bits-map", "b.yaml"], ["--bits-map applies to --method qat only"]),
        (["--method", "ptq", "--epochs", "3", "--teacher", "self"],
         ["--teacher, --epochs apply to --method qat only", "no training"]),
        (["--method", "qat", "--calibration", "entropy"],
         ["--calibration applies to --method ptq"]),
        (["--method", "ptq", "--bits", "4"], ["use --method qat"]),
    ],
)  # fmt: skip
def test_quantize_refuses_options_of_the_other_method(tmp_path, capsys, argv, words):
    base = ["quantize", "--checkpoint", tmp_path / "nowhere", "--run-dir", tmp_path / "r"]
    _refused(*_run([*base, *argv], capsys)[::2], *words)
    assert not (tmp_path / "r").exists()


def test_quantize_help_lists_the_bits_it_accepts(capsys):
    from satcompress.compress.quantize.config import WEIGHT_BITS

    with pytest.raises(SystemExit):
        main(["quantize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"weight bits: 8 (PTQ); {min(WEIGHT_BITS)} to {max(WEIGHT_BITS)} (QAT)" in text
    assert 5 in WEIGHT_BITS and "8|4|3|2|1" not in text


def _with_weights(tmp_path, values, name):
    """The tiny model with conv1's int8 weights replaced, stored at 8 bits."""
    from satcompress.artifact.format import write_artifact

    model = tiny_model()
    tensor = next(t for t in model.graph.initializer if t.name == "conv1.w")
    tensor.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.int8), "conv1.w"))
    path = tmp_path / name
    write_artifact(model, path, bits={"fc.w": 8}, info={"model": "tiny"})
    return path


def _spanning(low, high):
    """conv1's (4, 3, 3, 3) weights from ``low`` to ``high``, both taken."""
    return np.linspace(low, high, 4 * 3 * 3 * 3).round().reshape(4, 3, 3, 3)


def test_inspect_shows_the_real_range_of_8_bit_weights(tmp_path, capsys):
    ptq_like = _with_weights(tmp_path, _spanning(-64, 64), "w.satc")
    code, out, _ = _run(["inspect", ptq_like], capsys)
    assert code == 0
    assert "weight bits [8] (values within [-64, 64])" in out  # not a bare "[8]"
    assert "[-64, 64]" in next(line for line in out.splitlines() if "conv1 " in line)
    seven = _with_weights(tmp_path, _spanning(-64, 63), "w7.satc")
    code, out, _ = _run(["inspect", seven], capsys)
    assert "weight bits [8] (values within [-64, 63], which fit 7 bits)" in out
    full = _with_weights(tmp_path, _spanning(-127, 127), "w8.satc")
    code, out, _ = _run(["inspect", full], capsys)  # only fc's {-1, +1} is narrower now
    assert "weight bits [8] (values within [-1, 1], which fit 2 bits)" in out
    assert "[-127" not in out


def test_sign_env_passphrase_on_the_command_line(tmp_path, unsigned, capsys, monkeypatch):
    monkeypatch.setenv("SATCOMPRESS_KEY_PASSPHRASE", "s3cret")
    key = tmp_path / "enc"
    code, out, _ = _run(["keygen", "--out", key], capsys)
    assert code == 0 and "encrypted" in out
    assert main(["sign", str(unsigned), "--key", str(key)]) == 0
    monkeypatch.setenv("SATCOMPRESS_KEY_PASSPHRASE", "wrong")
    _refused(*_run(["sign", str(unsigned), "--key", str(key)], capsys)[::2], str(key))
    monkeypatch.delenv("SATCOMPRESS_KEY_PASSPHRASE")
    assert verify_file(unsigned, f"{key}.pub").verified
    assert os.environ.get("SATCOMPRESS_KEY_PASSPHRASE") is None


# --- --sign on the commands that write a .satc ------------------------------------------------


def test_quantize_and_prune_sign_what_they_write(eurosat_root, tmp_path, keys, capsys):
    (private, public), _ = keys
    data = ["--dataset", "eurosat", "--data-dir", eurosat_root]
    quick = ["--epochs", "1", "--batch-size", "16", "--limit-batches", "1"]
    run = tmp_path / "t"
    assert _run(["train", "--model", "test_cnn", *data, *quick, "--run-dir", run], capsys)[0] == 0
    ptq = ["quantize", "--method", "ptq", "--checkpoint", run, "--calibration-images", "8",
           "--no-eval", "--no-latency", "--run-dir", tmp_path / "q"]  # fmt: skip
    code, out, err = _run([*ptq, "--sign", private], capsys)
    assert code == 0, err
    assert "signed" in out and verify_file(tmp_path / "q" / "model.satc", public).verified
    prune = ["prune", "--checkpoint", run, "--method", "l1", "--ratio", "0.25", "--no-latency",
             "--run-dir", tmp_path / "p"]  # fmt: skip
    code, out, err = _run([*prune, "--sign", private], capsys)
    assert code == 0, err
    assert verify_file(tmp_path / "p" / "model.satc", public).verified
    _refused(*_run([*prune, "--no-eval", "--sign", private], capsys)[::2], "drop --no-eval")
    for argv in (ptq, prune, ["baic", "--checkpoint", run, "--budget", "1MB", "--run-dir",
                              tmp_path / "b"]):  # fmt: skip
        _refused(*_run([*argv, "--sign", tmp_path / "nokey"], capsys)[::2], "no key file at")


def test_baic_keeps_the_signature_within_the_budget(tmp_path, unsigned, keys, capsys):
    from satcompress.cli import build_parser
    from satcompress.cli.baic import _sign_within_budget, config_from_args

    (private, public), _ = keys
    argv = ["baic", "--checkpoint", "c", "--run-dir", "r", "--budget", "500kB"]
    assert config_from_args(build_parser().parse_args(argv)).budget == "500kB"
    signed = config_from_args(build_parser().parse_args([*argv, "--sign", str(private)]))
    assert signed.budget == str(500_000 - SIGNATURE_SIZE)
    ratio = [*argv[:-1], "44x", "--sign", str(private)]
    assert config_from_args(build_parser().parse_args(ratio)).budget == "44x"
    size = unsigned.stat().st_size
    key = load_private_key(private)
    with pytest.raises(ValueError, match="bytes over the budget, so it is left unsigned"):
        _sign_within_budget(unsigned, key, size + SIGNATURE_SIZE - 1)
    assert load_artifact(unsigned).signature is None
    _sign_within_budget(unsigned, key, size + SIGNATURE_SIZE)
    assert unsigned.stat().st_size == size + SIGNATURE_SIZE
    assert verify_file(unsigned, public).verified
