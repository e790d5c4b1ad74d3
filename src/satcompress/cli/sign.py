"""``satcompress keygen`` and ``satcompress sign``: Ed25519 keys and signed ``.satc`` files.

Usage::

    satcompress keygen --out keys/ground          # keys/ground (0600) + keys/ground.pub
    satcompress sign runs/q/model.satc --key keys/ground
    satcompress export --checkpoint runs/q --sign keys/ground      # or sign as it is written
    satcompress inspect runs/q/model.satc --verify keys/ground.pub --require-signature
    python -m satcompress.runtime predict model.satc IMAGES --verify ground.pub --require-signature

The private key stays on the ground; the device gets the ``.pub`` file. With
``$SATCOMPRESS_KEY_PASSPHRASE`` set, ``keygen`` encrypts the private key with it and the
signing commands read it from there. Layout of the signature: :mod:`satcompress.runtime.satc`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from satcompress.cli.common import signing_key


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``keygen`` and ``sign`` to the ``satcompress`` command."""
    keygen = commands.add_parser(
        "keygen", help="create an Ed25519 key pair to sign .satc files (KEY and KEY.pub)"
    )
    keygen.add_argument(
        "--out", type=Path, required=True, metavar="KEY",
        help="private key file to create (0600; never overwritten); the public key: KEY.pub",
    )  # fmt: skip
    keygen.set_defaults(handler=cmd_keygen)

    sign = commands.add_parser("sign", help="sign an existing .satc file (in place)")
    sign.add_argument("file", type=Path, help="the .satc file")
    sign.add_argument("--key", type=Path, required=True, dest="sign", help="private key file")
    sign.set_defaults(handler=cmd_sign)


def cmd_keygen(args: argparse.Namespace) -> int:
    """``satcompress keygen``."""
    from satcompress.runtime.sign import generate_key, key_id, passphrase_from_env

    passphrase = passphrase_from_env()
    private, public = generate_key(args.out, passphrase=passphrase)
    state = "encrypted with $SATCOMPRESS_KEY_PASSPHRASE" if passphrase else "unencrypted"
    print(f"private key {private} (owner-only, {state}): keep it off the device")
    print(f"public key {public}: key id {key_id(public)[:16]}; give it to --verify")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    """``satcompress sign``."""
    from satcompress.cli.common import sign_artifact

    sign_artifact(args.file, signing_key(args))
    return 0
