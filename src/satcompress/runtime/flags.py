"""``--verify PUBKEY`` / ``--require-signature``: one definition for every command reading a .satc.

Shared by the device CLI (``python -m satcompress.runtime``) and ``satcompress inspect/eval``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_verify_flags", "verify_options", "warn_unsigned"]


def add_verify_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--verify PUBKEY`` and ``--require-signature`` to ``parser``."""
    parser.add_argument(
        "--verify", type=Path, metavar="PUBKEY",
        help="check the .satc's Ed25519 signature with this public key (PEM or OpenSSH) first "
        "(a signed file that fails is refused; an unsigned one is used with a warning)",
    )  # fmt: skip
    parser.add_argument(
        "--require-signature", action="store_true",
        help="with --verify: refuse an unsigned .satc too",
    )  # fmt: skip


def verify_options(args: argparse.Namespace) -> dict[str, Any]:
    """``load_artifact``/``Runtime`` keywords of the flags ({} if ``--verify`` is not given).

    Raises:
        ValueError: For ``--require-signature`` without ``--verify``.
    """
    if args.require_signature and args.verify is None:
        raise ValueError("--require-signature needs --verify PUBKEY (the key to check with)")
    if args.verify is None:
        return {}
    return {"public_key": args.verify, "require_signature": args.require_signature}


def warn_unsigned(args: argparse.Namespace, path: Any, signature: Any, prog: str) -> None:
    """Warn on stderr when ``--verify`` was given and the file carries no signature."""
    if args.verify is not None and signature is None:
        print(
            f"{prog}: warning: {path} is not signed (--require-signature refuses it)",
            file=sys.stderr,
        )
