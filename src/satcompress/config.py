"""Serialisable dataclass configs.

Every stage (training, evaluation, and later distillation, pruning, quantization, search)
is configured by a small dataclass that validates itself and round-trips through a plain
dict, so the exact recipe of every result can be stored in its record and rebuilt later.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


_REGISTRY: dict[str, type[Config]] = {}


@dataclasses.dataclass
class Config:
    """Base class: dict/YAML round-trip plus a ``validate`` hook run on creation.

    Every subclass is registered by its class name, so a config serialised with
    :meth:`serialize` (its fields plus ``type`` and ``version``) comes back as the same class
    from :func:`config_from_dict`; stages dispatch on the config's type.
    """

    #: Bumped when a config's fields change meaning; stored with every serialised config.
    VERSION: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` if a field is invalid. Subclasses override."""

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict of the fields (paths become strings)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def serialize(self) -> dict[str, Any]:
        """``to_dict()`` plus ``type`` (class name) and ``version``: a recipe that rebuilds it."""
        return {"type": type(self).__name__, "version": self.VERSION, **self.to_dict()}

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        """Build a config from a dict, refusing unknown keys by name."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} option(s): {', '.join(unknown)}; "
                f"valid options are: {', '.join(sorted(names))}"
            )
        return cls(**values)

    @classmethod
    def from_yaml(cls: type[C], path: str | Path, **overrides: Any) -> C:
        """Load a YAML file of options, then apply ``overrides`` (for example CLI flags)."""
        values = load_yaml(path)
        values.update(overrides)
        return cls.from_dict(values)

    def replace(self: C, **changes: Any) -> C:
        """Copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a config serialised by :meth:`Config.serialize` (dispatching on ``type``).

    Raises:
        ConfigError: If ``type`` is missing or names no known config, or the version is newer.
    """
    values = dict(values)
    name = values.pop("type", None)
    version = values.pop("version", 1)
    cls = _REGISTRY.get(str(name))
    if cls is None:
        raise ConfigError(
            f"unknown config type {name!r}; known types: {', '.join(sorted(_REGISTRY))}"
        )
    if int(version) > cls.VERSION:
        raise ConfigError(
            f"{name} version {version} is newer than this satcompress reads ({cls.VERSION})"
        )
    return cls.from_dict(values)


def parse_value(text: str) -> Any:
    """A command-line value parsed as an int, a float, or else as YAML.

    Numbers come first because YAML 1.1 reads ``1e-4`` as a string; YAML then gives
    ``true``, ``null``, lists and strings.
    """
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def field_help(config_cls: type, name: str) -> str:
    """A field's description from the class docstring's ``Attributes:`` section.

    For ``--help``: continuation lines are joined and ``%`` is escaped for argparse.
    """
    lines = (config_cls.__doc__ or "").splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(f"{name}:"):
            indent = len(line) - len(line.lstrip())
            parts = [line.split(":", 1)[1].strip()]
            for more in lines[i + 1 :]:
                if not more.strip() or len(more) - len(more.lstrip()) <= indent:
                    break
                parts.append(more.strip())
            return " ".join(parts).replace("%", "%%")
    return ""


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ConfigError(
            f"{path} must hold a mapping of option: value, not {type(values).__name__}"
        )
    return values


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
