"""Ed25519 signatures of ``.satc`` files: sign on the ground, verify on the device.

A signed artifact is the unsigned file with the signed flag set in its header (so its
SHA-256 changes) and a 112-byte signature block appended; the signature covers every byte
before the block. The layout is in :mod:`satcompress.runtime.satc`. Example::

    from satcompress.runtime import generate_key, sign_file, verify_file

    generate_key("keys/ground")              # keys/ground (private, 0600), keys/ground.pub
    sign_file("model.satc", "keys/ground")   # in place, atomically
    verify_file("model.satc", "keys/ground.pub")  # raises SignatureError unless it holds

``Runtime(path, public_key=..., require_signature=True)`` and
``python -m satcompress.runtime predict --verify KEY.pub --require-signature`` check it on the
device before anything of the file is used.

Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public); a public key may also be an
OpenSSH ``ssh-ed25519`` line. A private key may be encrypted with a passphrase (given to
:func:`generate_key` / :func:`load_private_key`, or in the ``SATCOMPRESS_KEY_PASSPHRASE``
environment variable on the command line). ``cryptography`` is imported only here, and only
when a key is used: a device that verifies nothing does not need it.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from satcompress.runtime.errors import SignatureError
from satcompress.runtime.satc import (
    FLAG_SIGNED,
    HEADER,
    SIGNATURE_BLOCK,
    SIGNATURE_MAGIC,
    SIGNATURE_VERSION,
    Signature,
    load_artifact,
    parse_artifact,
)
from satcompress.utils.io import atomic_write_bytes

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "PASSPHRASE_ENV",
    "KeyFileError",
    "check_signature",
    "generate_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "passphrase_from_env",
    "sign_bytes",
    "sign_file",
    "verify_file",
]

#: Environment variable the command line reads a private key's passphrase from.
PASSPHRASE_ENV = "SATCOMPRESS_KEY_PASSPHRASE"
_ED25519 = 1


class KeyFileError(ValueError):
    """A key file is missing, unreadable, of another kind, or would be overwritten."""


def passphrase_from_env() -> bytes | None:
    """The private key passphrase in ``$SATCOMPRESS_KEY_PASSPHRASE`` (None if unset or empty)."""
    return os.environ.get(PASSPHRASE_ENV, "").encode() or None


def generate_key(path: str | Path, *, passphrase: bytes | None = None) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``path`` (private) and ``path.pub`` (public), both PEM.

    The private key file is created with permissions 0600 (owner only) and never
    overwritten; neither is an existing public key file.

    Args:
        path: The private key file to create.
        passphrase: Encrypt the private key with it (None: unencrypted).

    Returns:
        The private and public key files.

    Raises:
        KeyFileError: If either file exists.
    """
    ed25519, serialization = _crypto()
    private, public = Path(path), Path(f"{path}.pub")
    for target in (private, public):
        if target.exists():
            raise KeyFileError(f"{target} exists; refusing to overwrite a key")
    key = ed25519.Ed25519PrivateKey.generate()
    encryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _create(private, pem, 0o600)
    _create(public, pub, 0o644)
    return private, public


def _create(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` holding ``data``, with ``mode`` from the start (never replacing a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as err:
        raise KeyFileError(f"{path} exists; refusing to overwrite a key") from err
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # whatever the umask
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def load_private_key(source: Any, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file, its bytes, or the key itself.

    Raises:
        KeyFileError: If the file is missing, not a private key, not Ed25519, or encrypted
            without (or with another) passphrase.
    """
    ed25519, serialization = _crypto()
    if isinstance(source, ed25519.Ed25519PrivateKey):
        return source
    data, name = _key_bytes(source)
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError as err:  # encrypted without a passphrase, or a passphrase for a plain key
        raise KeyFileError(f"{name}: {err} (passphrase: {PASSPHRASE_ENV})") from err
    except ValueError as err:
        raise KeyFileError(f"{name} is not a readable PEM private key ({err})") from err
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"{name} is a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(source: Any) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM or OpenSSH file, its bytes, or the key itself.

    Raises:
        KeyFileError: If the file is missing, not an Ed25519 public key, or a private key.
    """
    ed25519, serialization = _crypto()
    if isinstance(source, ed25519.Ed25519PublicKey):
        return source
    data, name = _key_bytes(source)
    if b"PRIVATE KEY" in data:
        raise KeyFileError(
            f"{name} is a private key; verify with its public key (the .pub file) and keep "
            "the private one off the device"
        )
    try:
        if data.lstrip().startswith(b"ssh-"):
            key = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise KeyFileError(f"{name} is not a readable public key ({err})") from err
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise KeyFileError(f"{name} is a {type(key).__name__}, not an Ed25519 public key")
    return key


def _key_bytes(source: Any) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        return source, "the key"
    path = Path(source)
    try:
        return path.read_bytes(), str(path)
    except FileNotFoundError as err:
        raise KeyFileError(f"no key file at {path}") from err
    except OSError as err:
        raise KeyFileError(f"cannot read the key file {path}: {err.strerror}") from err


def key_id(public_key: Any) -> str:
    """Hex SHA-256 of the raw 32-byte public key: what a signature block names its key by."""
    _, serialization = _crypto()
    raw = load_public_key(public_key).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()


def sign_bytes(blob: bytes, private_key: Any, passphrase: bytes | None = None) -> bytes:
    """The signed form of an artifact's bytes (an earlier signature is replaced).

    The header's signed flag is set, the SHA-256 recomputed over it, and the signature block
    of the whole appended. ``blob`` must be a well-formed artifact (see :func:`sign_file`,
    which checks it first).
    """
    key = load_private_key(private_key, passphrase)
    _, _, _, manifest_len, payload_len = HEADER.unpack_from(blob)
    body = bytearray(blob[: HEADER.size + manifest_len + payload_len])
    flags = struct.unpack_from("<H", body, 10)[0]
    struct.pack_into("<H", body, 10, flags | FLAG_SIGNED)
    signed = bytes(body) + hashlib.sha256(body).digest()
    block = SIGNATURE_BLOCK.pack(
        SIGNATURE_MAGIC,
        SIGNATURE_VERSION,
        _ED25519,
        0,
        bytes.fromhex(key_id(key.public_key())),
        key.sign(signed),
    )
    return signed + block


def sign_file(
    path: str | Path,
    private_key: Any,
    *,
    passphrase: bytes | None = None,
    output: str | Path | None = None,
) -> Signature:
    """Sign an artifact file (in place, atomically, unless ``output`` is given).

    The file is verified and validated first (:func:`~satcompress.runtime.satc.load_artifact`):
    a damaged or malformed file is never signed. Signing again replaces the signature.

    Args:
        path: The ``.satc`` file.
        private_key: The Ed25519 private key (PEM file, its bytes, or the key).
        passphrase: The private key's passphrase, if it is encrypted.
        output: Write the signed file there instead.

    Returns:
        The new signature (``verified``: it was checked after signing).

    Raises:
        ArtifactError: If the file is not a valid artifact.
        KeyFileError: If the key cannot be used.
    """
    key = load_private_key(private_key, passphrase)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no artifact file at {path}")
    blob = path.read_bytes()
    parse_artifact(blob, path)  # these very bytes are checked, then signed
    target = atomic_write_bytes(output or path, sign_bytes(blob, key))
    return verify_file(target, key.public_key())


def verify_file(path: str | Path, public_key: Any) -> Signature:
    """Check that an artifact is signed by ``public_key`` and unaltered since.

    Returns:
        Its signature, ``verified``.

    Raises:
        SignatureError: If it is unsigned, signed by another key, or altered after signing.
        ArtifactError: If it is not a valid artifact at all.
    """
    artifact = load_artifact(path, public_key=public_key, require_signature=True)
    assert artifact.signature is not None  # required above
    return artifact.signature


def check_signature(
    signed: bytes,
    signature: Signature | None,
    public_key: Any,
    *,
    require: bool,
    where: Any,
) -> Signature | None:
    """Verify a file's signature block with ``public_key`` (called by ``load_artifact``).

    Args:
        signed: Every byte of the file before its signature block.
        signature: The block as read (None: the file is unsigned).
        public_key: The key it must verify with.
        require: Refuse an unsigned file.
        where: The file, for messages.

    Returns:
        The signature marked ``verified``, or None for an unsigned file not ``require``-d.

    Raises:
        SignatureError: If it is required but missing, by another key, or does not verify.
    """
    key = load_public_key(public_key)
    if signature is None:
        if require:
            raise SignatureError(f"{where} is not signed, and a signature is required")
        return None
    expected = key_id(key)
    if signature.key_id != expected:
        raise SignatureError(
            f"{where} is signed by another key (key id {signature.key_id[:16]}), not by "
            f"this public key ({expected[:16]})"
        )
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(signature.value, signed)
    except InvalidSignature:
        raise SignatureError(
            f"{where}: its Ed25519 signature does not verify: the file was altered after "
            "it was signed"
        ) from None
    return Signature(signature.algorithm, signature.key_id, True, signature.value)


def _crypto() -> tuple[Any, Any]:
    """``cryptography``'s ed25519 and serialization modules, imported on first use."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as err:  # pragma: no cover - installed with satcompress
        raise KeyFileError(
            "signatures need the 'cryptography' package: pip install 'cryptography>=42'"
        ) from err
    return ed25519, serialization
