"""What every command shares: data and config flags, the dataset of a checkpoint, records.

Public names only: the command modules import these, never each other's helpers.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from satcompress.config import field_help, parse_value
from satcompress.runtime.flags import verify_options, warn_unsigned
from satcompress.train.config import TrainConfig


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    """``--dataset``, ``--data-dir`` and the other data flags (default: the card's data)."""
    group = parser.add_argument_group("data (default: what the checkpoint's card names)")
    group.add_argument("--dataset", default=None, help="eurosat, ucmerced or imagefolder")
    group.add_argument("--data-dir", type=Path, default=None, help="folder holding the dataset")
    group.add_argument("--split-dir", type=Path, help="folder of split files")
    group.add_argument("--download", action="store_true", help="download if missing")
    group.add_argument("--image-size", type=int, help="decode resolution")
    group.add_argument("--skip-bad-files", action="store_true", help="skip unreadable images")


def add_run_flags(
    parser: argparse.ArgumentParser,
    config_help: str = "YAML file of TrainConfig options",
    *,
    resume: bool = True,
) -> None:
    """``--config``, ``--run-dir``, ``--resume`` and ``--no-eval``: what training commands share."""
    parser.add_argument("--config", type=Path, help=config_help)
    parser.add_argument("--run-dir", type=Path, required=True, help="output folder of the run")
    if resume:
        parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--no-eval", action="store_true", help="skip the test-split evaluation")


def add_options(
    group: argparse._ArgumentGroup,
    options: Iterable[tuple[str | tuple[str, ...], str, str, dict[str, Any]]],
) -> None:
    """One flag per ``(flags, dest, help, kwargs)``; unset flags stay out of the namespace."""
    for flags, dest, text, kwargs in options:
        names = (flags,) if isinstance(flags, str) else flags
        group.add_argument(*names, dest=dest, default=argparse.SUPPRESS, help=text, **kwargs)


def add_field_flag(
    group: argparse._ArgumentGroup,
    config_cls: type,
    name: str,
    dest: str | None = None,
    **kwargs: Any,
) -> None:
    """``--<dest>`` for the field ``name`` of ``config_cls``, its help from the field's docs.

    Unset, it stays out of the namespace (``dest`` defaults to ``name``).
    """
    dest = dest or name
    help_text = field_help(config_cls, name)
    group.add_argument(
        "--" + dest.replace("_", "-"), dest=dest, default=argparse.SUPPRESS, help=help_text,
        **kwargs,
    )  # fmt: skip


def add_config_flags(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One ``--flag`` per config field; unset flags stay out of the namespace."""
    group = parser.add_argument_group("training options (override --config)")
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        hint = strip_optional(hints[field.name])
        kwargs: dict[str, Any] = {}
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif hint in (int, float, str):
            kwargs["type"] = hint
        elif typing.get_origin(hint) is tuple:
            kwargs.update(type=float, nargs=3)
        else:  # dicts and nested configs: key=value pairs
            kwargs.update(type=key_value, nargs="+", metavar="KEY=VALUE")
        add_field_flag(group, config_cls, field.name, **kwargs)


def strip_optional(hint: Any) -> Any:
    """``X`` of ``X | None``; any other hint unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def key_value(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` (the value as YAML; dashes in the key become underscores)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.replace("-", "_"), parse_value(value)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < ``--config`` YAML < command-line flags."""
    values = TrainConfig.load_values(args.config) if args.config else {}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in names & set(vars(args)):
        value = getattr(args, name)
        if name in ("model_kwargs", "augment"):
            value = {**values.get(name, {}), **dict(value)}
        values[name] = value
    return TrainConfig.from_dict(values).with_absolute_paths()


def data_overrides(args: argparse.Namespace) -> Any:
    """The data flags of a command as :class:`satcompress.pipeline.DataOverrides`."""
    from satcompress.pipeline.data import DataOverrides

    return DataOverrides.from_namespace(args)


def architecture_hint(args: argparse.Namespace) -> dict[str, Any]:
    """What ``--model`` tells a loader about weights without a card.

    Returns:
        The registry name and the class count of a named ``--dataset`` (EuroSAT's 10, UC
        Merced's 21) as loader keywords; ``{}`` without ``--model``.
    """
    name = getattr(args, "model", None)
    if name is None:
        return {}
    from satcompress.data import dataset_classes

    dataset = getattr(args, "dataset", None)
    classes = dataset_classes(dataset) if dataset and dataset != "imagefolder" else None
    return {"model_name": name, "num_classes": len(classes) if classes else None}


def source_and_data(args: argparse.Namespace) -> tuple[Any, Any]:
    """The ``--checkpoint`` model (any stage's output) and its data, classes checked.

    The data is the card's unless the data flags give it (:func:`data_overrides`);
    ``--model`` names the architecture of weights without a card, where a command has it.
    """
    from satcompress.pipeline import load
    from satcompress.pipeline.data import dataset_for

    source = load(args.checkpoint, **architecture_hint(args))
    dataset = dataset_for(source.card, None, data_overrides(args), where=args.checkpoint)
    return source, dataset


def print_result(headline: str, record: dict[str, Any] | None) -> int:
    """Print a stage's headline, then its record if it has one; the exit status (0)."""
    print(headline)
    if record is not None:
        print_record(record)
    return 0


def print_record(record: dict[str, Any]) -> None:
    """One line: model, data, accuracy, cost, bytes of the deployable file, latency."""
    latency = record["latency_ms"]
    print(
        f"{record['model']} on {record['dataset']} ({record['split']}): "
        f"accuracy {record['accuracy'] * 100:.2f}%, {record['params']:,} params, "
        f"{record['macs'] / 1e6:.1f} M MACs, "
        f"{record['size_bytes']:,} bytes ({record.get('format', 'onnx-fp32')}), "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in latency.items())
    )


# --- signed artifacts (Ed25519, satcompress.runtime.sign) ---


def add_sign_flag(parser: argparse.ArgumentParser) -> None:
    """``--sign KEY``: sign the ``.satc`` the command writes."""
    parser.add_argument(
        "--sign", type=Path, metavar="KEY",
        help="sign the written .satc with this Ed25519 private key (from `satcompress keygen`; "
        "an encrypted key's passphrase in $SATCOMPRESS_KEY_PASSPHRASE)",
    )  # fmt: skip


def signing_key(args: argparse.Namespace) -> Any:
    """The ``--sign`` private key, loaded now (a bad key fails before a long run), or None.

    Raises:
        KeyFileError: If the key cannot be used (a ``ValueError``: one line, exit status 2).
    """
    if getattr(args, "sign", None) is None:
        return None
    from satcompress.runtime.sign import load_private_key, passphrase_from_env

    return load_private_key(args.sign, passphrase_from_env())


def sign_artifact(path: str | Path, key: Any) -> None:
    """Sign the written ``path`` with ``key`` (from :func:`signing_key`) and say so."""
    if key is None:
        return
    from satcompress.runtime.sign import sign_file

    signature = sign_file(path, key)
    print(
        f"signed {path} (Ed25519, key id {signature.key_id[:16]}): "
        f"{Path(path).stat().st_size:,} bytes with the signature block"
    )


def verify_artifact(args: argparse.Namespace, path: str | Path) -> Any:
    """Load ``path`` checking ``--verify``/``--require-signature``; warn if it is unsigned.

    Returns:
        The :class:`~satcompress.runtime.satc.Artifact`.
    """
    from satcompress.runtime.satc import load_artifact

    artifact = load_artifact(path, **verify_options(args))
    warn_unsigned(args, path, artifact.signature, "satcompress")
    return artifact
