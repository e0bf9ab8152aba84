"""Options live in dataclasses: YAML config files for them, and the field types tyro turns into flags.

A config file is a YAML mapping of field names to values, e.g. what `dico train --print-config` prints or the
`config.yaml` a training run writes; any subset of the fields may be given.
"""

import dataclasses
import json
import math
import os
import tempfile
import types
import typing
from pathlib import Path

import typeguard
import yaml
from tyro.constructors import PrimitiveConstructorSpec


def comma_separated(kind, metavar: str, count: int | None = None) -> PrimitiveConstructorSpec:
    """One flag value such as `0.9,0.999` for a tuple field (`count` items if given); None stays None."""

    def parse(args: list) -> tuple:
        items = tuple(kind(v) for v in args[0].split(",") if v.strip())
        if count is not None and len(items) != count:
            raise ValueError(f"expected {count} comma-separated values, got {args[0]!r}")
        return items

    return PrimitiveConstructorSpec(
        nargs=1, metavar=metavar, instance_from_str=parse,
        is_instance=lambda value: value is None or isinstance(value, tuple),
        str_from_instance=lambda value: ["None"] if value is None else [",".join(str(v) for v in value)])


def json_object(metavar: str = "JSON") -> PrimitiveConstructorSpec:
    """One flag value holding a JSON object, e.g. '{"channel_attention": "se"}'."""

    def parse(args: list) -> dict:
        value = json.loads(args[0])
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {args[0]!r}")
        return value

    return PrimitiveConstructorSpec(nargs=1, metavar=metavar, instance_from_str=parse,
                                    is_instance=lambda value: isinstance(value, dict),
                                    str_from_instance=lambda value: [json.dumps(value)])


def to_dict(config) -> dict:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def to_yaml(config) -> str:
    def plain(value):
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return yaml.safe_dump(plain(to_dict(config)), sort_keys=False, default_flow_style=None)


def write_yaml(config, path) -> Path:
    """Write `config` as YAML atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(to_yaml(config))
    honour_umask(tmp)
    os.replace(tmp, path)
    return path


def new_file_mode() -> int:
    """The permissions the umask gives a new file (0644 under umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def honour_umask(*paths) -> None:
    """Give files written through a private temporary file (mkstemp and safetensors' writer make them 0600) the
    permissions of any other new file, so that they read like their siblings."""
    mode = new_file_mode()
    for path in paths:
        os.chmod(path, mode)


def read_yaml(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"--config {path}: not valid YAML ({err})") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of option names to values")
    return values


def accepts(hint, kind) -> bool:
    """Whether the field type `hint` is `kind` or a container/union of it (tuple[float, float], int | None)."""
    if hint is kind:
        return True
    origin = typing.get_origin(hint)
    if origin is kind:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(accepts(arg, kind) for arg in typing.get_args(hint))
    return False


def checked(name: str, value, hint, source: str):
    """`value` (from YAML) as the field type `hint` asks, or a ValueError naming the option."""
    if isinstance(value, list) and accepts(hint, tuple):
        value = tuple(value)
    if isinstance(value, str) and accepts(hint, float):
        try:
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as text
        except ValueError:
            pass
    try:
        typeguard.check_type(value, hint)
    except typeguard.TypeCheckError as err:
        raise ValueError(f"{source}: {name}: {value!r}: {err}") from None
    return value


def with_values(config, values: dict, source: str = "config file"):
    """`config` with the fields in `values` replaced, each checked against its type."""
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(type(config))
    return dataclasses.replace(config, **{k: checked(k, v, hints[k], source) for k, v in values.items()})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def literal_choices(hint) -> tuple | None:
    """The values a Literal field type allows (None included for `Literal[...] | None`), or None for other types."""
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [literal_choices(arg) if arg is not type(None) else (None,) for arg in typing.get_args(hint)]
        if all(part is not None for part in parts):
            return tuple(v for part in parts for v in part)
    return None


def check_choices(config, cls=None) -> None:
    """A ValueError naming the flag for each Literal field declared in `cls` (default: type(config)) whose value is
    not one it allows: the choices are the type's, written once."""
    cls = cls or type(config)
    hints = typing.get_type_hints(cls)
    for name in cls.__dict__.get("__annotations__", {}):
        allowed = literal_choices(hints[name])
        if allowed is not None and getattr(config, name) not in allowed:
            raise ValueError(f"{flag(name)} must be one of {', '.join(map(str, allowed))}, "
                             f"got {getattr(config, name)!r}")


def check_int(name: str, value, low: int, high: int | None = None, none_ok: bool = False) -> None:
    """A ValueError naming the flag unless `value` is an integer in [low, high] (or None when allowed)."""
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"{flag(name)} must be {allowed}{' or None' if none_ok else ''}, got {value!r}")


def check_number(name: str, value, low: float | None = None, high: float | None = None, low_open: bool = False,
                 none_ok: bool = False) -> None:
    """A ValueError naming the flag unless `value` is a finite number within the bounds (`low_open`: > low)."""
    if value is None and none_ok:
        return
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    bad = bad or (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high)
    if bad:
        bounds = [f"{'>' if low_open else '>='} {low}" if low is not None else "", f"<= {high}" if high is not None else ""]
        allowed = " and ".join(b for b in bounds if b)
        raise ValueError(f"{flag(name)} must be a finite number{' ' + allowed if allowed else ''}, got {value!r}")


def check_writable_parent(name: str, path) -> None:
    """A ValueError naming the flag when `path` could not be written: an existing folder in the way, or no write
    permission on the nearest existing parent folder (checked before any work)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{flag(name)} {path} is a folder; name a file")
    check_can_create(name, path.parent, path)


def check_writable_dir(name: str, path) -> None:
    """A ValueError naming the flag when `path` cannot be (or be made) a folder we can write in."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag(name)} {path} is a file, not a folder")
    check_can_create(name, path, path)


def check_can_create(name: str, folder: Path, path: Path) -> None:
    """`folder` exists and is writable, or its nearest existing parent is a folder we may write in."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag(name)} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag(name)} {path}: no permission to write in {existing}")
