"""Serialisable dataclass configs.

Every stage (training, evaluation, and later distillation, pruning, quantization, search)
is configured by a small dataclass that validates itself and round-trips through a plain
dict, so the exact recipe of every result can be stored in its record and rebuilt later.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import os
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


class ConfigTypeError(ConfigError):
    """A value has the wrong type for its field: ``KEY: expected TYPE, got VALUE (TYPE)``.

    Attributes:
        key: The field's name (dotted for a nested config's field, e.g. ``augment.shift``).
        detail: The rest of the message (``expected ..., got ...``).
    """

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key}: {detail}")
        self.key = key
        self.detail = detail


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
        for field in dataclasses.fields(self):
            value = check_field(type(self), field.name, getattr(self, field.name))
            object.__setattr__(self, field.name, value)
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
        """Build a config from a dict, refusing unknown keys and mistyped values by name."""
        _check_keys(cls, values)
        return cls(**values)

    @classmethod
    def from_yaml(cls: type[C], path: str | Path, **overrides: Any) -> C:
        """Load a YAML file of options, then apply ``overrides`` (for example CLI flags)."""
        values = cls.load_values(path)
        values.update(overrides)
        return cls.from_dict(values)

    @classmethod
    def load_values(cls, path: str | Path) -> dict[str, Any]:
        """The options of a YAML file, their names and types checked (not yet their ranges).

        For commands that merge flags into a file's options before building the config: a
        mistake in the file is reported with the file's name, before anything runs.

        Raises:
            ConfigError: ``FILE: KEY: expected TYPE, got VALUE (TYPE)``, an unknown key, or
                a missing or malformed file.
        """
        values = load_yaml(path)
        try:
            check_values(cls, values)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        return values

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


def check_values(cls: type[Config], values: dict[str, Any]) -> None:
    """Check the keys of ``values`` and the type of each value (nested configs too).

    Ranges and relations between fields are left to the config's ``validate``.

    Raises:
        ConfigError: For an unknown key or a value of the wrong type.
    """
    _check_keys(cls, values)
    hints = _type_hints(cls)
    for name, value in values.items():
        config_cls = _config_class(hints[name])
        if config_cls is not None and isinstance(value, dict):
            _nested(name, functools.partial(check_values, config_cls, value))
        else:
            check_field(cls, name, value)


def check_field(cls: type[Config], name: str, value: Any) -> Any:
    """``value`` checked against the type hint of the field ``name``, converted where safe.

    Safe conversions only: a string or path-like where a path is expected, any sequence
    where a tuple or list is, a path-like where a string is, NumPy scalars to Python ones,
    and a dict of options where a nested config is. An int is accepted (and kept) where a
    float is expected. Never a string to a number or a bool, nor a float to an int.

    Raises:
        ConfigTypeError: ``KEY: expected TYPE, got VALUE (TYPE)``.
    """
    hint = _type_hints(cls)[name]
    config_cls = _config_class(hint)
    if config_cls is not None and isinstance(value, dict):
        return _nested(name, functools.partial(config_cls.from_dict, value))
    if config_cls is not None and isinstance(value, Config):
        return value
    from pydantic import ValidationError

    try:
        return _adapter(hint).validate_python(value)
    except ValidationError:
        text = repr(value)
        text = text if len(text) <= 80 else text[:77] + "..."
        detail = f"expected {describe_type(hint)}, got {text} ({type(value).__name__})"
        raise ConfigTypeError(name, detail) from None


def describe_type(hint: Any) -> str:
    """A type hint in words, for error messages: ``int | None`` -> ``an integer or null``."""
    singular, _ = _words(hint)
    return singular


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


_WORDS: dict[Any, tuple[str, str]] = {
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    bool: ("true or false", "true/false values"),
    str: ("a string", "strings"),
    Path: ("a path", "paths"),
    Any: ("any value", "values"),
}


def _words(hint: Any) -> tuple[str, str]:
    """``(singular, plural)`` wording of a type hint."""
    if hint in _WORDS:
        return _WORDS[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and issubclass(hint, Config):
        return f"a mapping of {hint.__name__} options", f"mappings of {hint.__name__} options"
    if origin in (typing.Union, types.UnionType):
        words = [_words(a) for a in args if a is not type(None)]
        null = " or null" if type(None) in args else ""
        return (
            " or ".join(w[0] for w in words) + null,
            " or ".join(w[1] for w in words) + null,
        )
    if origin in (tuple, list):
        return _sequence_words(args)
    if origin is dict:
        key, value = (_words(a)[1] for a in args) if args else ("keys", "values")
        return f"a mapping of {key} to {value}", f"mappings of {key} to {value}"
    name = getattr(hint, "__name__", str(hint))
    return f"a {name}", f"{name} values"


def _sequence_words(args: tuple[Any, ...]) -> tuple[str, str]:
    if not args or (len(args) == 2 and args[1] is Ellipsis):
        items = _words(args[0])[1] if args else "values"
        return f"a list of {items}", f"lists of {items}"
    if len(set(args)) == 1:
        items = f"{len(args)} {_words(args[0])[1]}"
    else:
        items = ", ".join(_words(a)[0] for a in args)
    return f"a list of {items}", f"lists of {items}"


def _check_keys(cls: type[Config], values: dict[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names, key=str)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} option(s): {', '.join(map(str, unknown))}; "
            f"valid options are: {', '.join(sorted(names))}"
        )


def _nested(name: str, build: Any) -> Any:
    """``build()``, its errors prefixed with the field ``name`` of the outer config."""
    try:
        return build()
    except ConfigTypeError as err:
        raise ConfigTypeError(f"{name}.{err.key}", err.detail) from None
    except ConfigError as err:
        if str(err).startswith(f"{name}."):
            raise
        raise ConfigError(f"{name}: {err}") from None


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of a config class (``from __future__ import annotations``)."""
    return typing.get_type_hints(cls)


def _config_class(hint: Any) -> type[Config] | None:
    """The Config class of a hint ``C`` or ``C | None``, else None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    return hint if isinstance(hint, type) and issubclass(hint, Config) else None


@functools.cache
def _adapter(hint: Any) -> Any:
    """A cached pydantic ``TypeAdapter`` of the strict-enough form of ``hint``."""
    from pydantic import TypeAdapter

    return TypeAdapter(_strict(hint))


def _strict(hint: Any) -> Any:
    """``hint`` with its scalar types strict (see :func:`check_field`); containers stay lax."""
    from pydantic import BeforeValidator, Strict

    scalars = {int: _integral, float: _real, bool: _numpy_bool, str: _path_text}
    if hint is float:  # an int stays an int: recipes hash their values (experiments.keys)
        number = typing.Union[typing.Annotated[int, Strict()], typing.Annotated[float, Strict()]]  # noqa: UP007
        return typing.Annotated[number, BeforeValidator(_real)]
    if hint in scalars:
        return typing.Annotated[hint, BeforeValidator(scalars[hint]), Strict()]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and issubclass(hint, Config):
        return typing.Annotated[Any, BeforeValidator(functools.partial(_instance, hint))]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_strict(a) for a in args)]  # noqa: UP007
    if origin in (tuple, list, dict) and args:
        return origin[tuple(a if a is Ellipsis else _strict(a) for a in args)]
    return hint


def _integral(value: Any) -> Any:
    """NumPy integers as ``int``; anything else unchanged (for the strict check)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):
        return int(value)
    return value


def _real(value: Any) -> Any:
    """NumPy numbers as Python ones; anything else unchanged (for the strict check)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return _integral(value)
    if isinstance(value, numbers.Real) and not isinstance(value, float):
        return float(value)
    return value


def _numpy_bool(value: Any) -> Any:
    """A NumPy bool as ``bool``; anything else unchanged (for the strict check)."""
    kind = type(value)
    numpy_bool = kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_")
    return bool(value) if numpy_bool else value


def _path_text(value: Any) -> Any:
    """A path-like as its string; anything else unchanged (for the strict check)."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _instance(config_cls: type[Config], value: Any) -> Any:
    if isinstance(value, config_cls):
        return value
    raise ValueError(f"expected {config_cls.__name__}")
