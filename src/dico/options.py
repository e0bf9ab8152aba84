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


def check_writable_dir(name: str, path) -> None:
    """A ValueError naming the flag when `path` cannot be (or be made) a folder we can write in."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag(name)} {path} is a file, not a folder")
    check_can_create(f"{flag(name)} {path}", path)


def check_can_create(said: str, folder: Path) -> None:
    """`folder` exists and is writable, or its nearest existing parent is a folder we may write in; a message starts
    with `said` (the flag and the path it names)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{said}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{said}: no permission to write in {existing}")


# --- sampling values: one check each, for the flags, DiCoPipeline, the demo and the Python sampling functions ----
# Each message names the flag and, where it differs, the Python argument, so the same text serves every entry.
# Integers must be integers: 2.5 and 2.0 are refused alike (the flag parser refuses both too); numpy and torch
# integer scalars are accepted.

def option_name(flag_name: str, argument: str) -> str:
    """'--cfg-scale (guidance_scale)', or just '--seed' when the flag and the argument share the name."""
    return flag(flag_name) if flag_name == argument else f"{flag(flag_name)} ({argument})"


def as_integer(value):
    """`value` as a Python int if it is an integer (int, numpy or 0-d torch integer; not bool, not float), else None."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return None
    if isinstance(value, int):
        return int(value)
    dtype = getattr(value, "dtype", None)
    if dtype is not None and getattr(value, "ndim", 1) == 0 and "int" in str(dtype):
        return int(value)
    return None


def shown(value) -> str:
    """How a refused value is quoted: nan, 2.5, 'x', a tensor's values."""
    if hasattr(value, "tolist") and not isinstance(value, (int, float)):
        return repr(value.tolist())
    return repr(value) if not isinstance(value, float) else str(value)


def check_guidance_scale(value, argument: str = "guidance_scale") -> float:
    """The classifier-free guidance scale as a float: a finite number >= 0 (1 = no guidance, 0 = unconditional)."""
    number = value
    if as_integer(value) is not None or getattr(value, "ndim", None) == 0 and "float" in str(value.dtype):
        number = float(value)  # numpy / torch scalars
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) or number < 0:
        raise ValueError(f"{option_name('cfg_scale', argument)} must be a finite number >= 0, got {shown(value)}")
    return float(number)


def check_steps(value, argument: str = "num_inference_steps", low: int = 1) -> int:
    """A step count as an int >= `low`."""
    number = as_integer(value)
    if number is None or number < low:
        raise ValueError(f"{option_name('steps', argument)} must be an integer >= {low}, got {shown(value)}")
    return number


SEED_LIMIT = 2**64  # keys are mixed as unsigned 64-bit integers (dico.randomness)


def check_seed(value, argument: str = "seed") -> int:
    """A sampling seed as an int in [0, 2**64)."""
    number = as_integer(value)
    if number is None or not 0 <= number < SEED_LIMIT:
        raise ValueError(f"{option_name('seed', argument)} must be an integer in [0, 2**64), got {shown(value)}")
    return number


def check_guidance_channels(value, argument: str = "guidance_channels"):
    """'all', or the number (>= 1) of leading output channels guidance acts on."""
    if value == "all" and isinstance(value, str):
        return value
    number = as_integer(value)
    if number is None or number < 1:
        raise ValueError(f"{option_name('guidance_channels', argument)} must be an integer >= 1 or 'all', "
                         f"got {shown(value)}")
    return number


def check_class_ids(values, num_classes: int | None = None, argument: str = "class_labels") -> list:
    """Class ids (a list, tuple, array or tensor of integers) as a list of ints, each in [0, num_classes) (only >= 0
    when num_classes is None; an unconditional model, num_classes 0, has the one label 0). Float ids such as 1.5, or
    even 1.0, and bools are refused, never rounded."""
    if hasattr(values, "tolist") and getattr(values, "dtype", None) is not None:
        kind = str(values.dtype)
        items = values.reshape(-1).tolist() if hasattr(values, "reshape") else values.tolist()
        ids, bad = items, []
        if "int" not in kind:  # a float or bool tensor: refused whatever its values
            bad = [float(f"{v:.7g}") if "float" in kind else v for v in items[:1]] or [values]  # float32: 1.9
    else:
        items = list(values) if isinstance(values, (list, tuple, range)) else [values]
        ids = [as_integer(v) for v in items]
        bad = [v for v, i in zip(items, ids) if i is None]
    high = None if num_classes is None else max(int(num_classes), 1)
    if not bad:
        bad = [i for i in ids if i < 0 or (high is not None and i >= high)]
    if bad or not ids:
        allowed = f"in [0, {high})" if high is not None else ">= 0"
        got = shown(bad[0]) if bad else "none"
        raise ValueError(f"{option_name('classes', argument)} must be integer class ids {allowed}, got {got}")
    return ids


# --- outputs: never replaced unless asked (--overwrite), never written into a folder that is not ours ------------

PIPELINE_CLASS = "DiCoPipeline"  # what a dico pipeline folder's model_index.json names (dico.pipelines)


def is_pipeline_folder(path) -> bool:
    """Whether the folder `path` is a dico pipeline folder: its model_index.json names DiCoPipeline."""
    try:
        index = json.loads((Path(path) / "model_index.json").read_text())
    except (OSError, ValueError):
        return False
    name = index.get("_class_name") if isinstance(index, dict) else None
    return name == PIPELINE_CLASS or isinstance(name, list) and bool(name) and name[-1] == PIPELINE_CLASS


def check_new_output(path, overwrite: bool = False, flag_name: str | None = None, folder: bool = False) -> None:
    """A ValueError (before any work) when the output `path` cannot be written: a parent that is a file, an existing
    output without `overwrite`, a file where a folder goes or the reverse, or (`folder`) a non-empty folder that is
    not a dico pipeline folder, which is never written into, even with `overwrite`. `flag_name` (e.g. "out") is
    named in the message when the path came from that flag."""
    path = Path(path).expanduser()
    said = f"{flag(flag_name)} {path}" if flag_name else str(path)
    if path.is_dir() and not folder:
        raise ValueError(f"{said} is a folder; name a file")
    if path.exists() and folder and not path.is_dir():
        raise ValueError(f"{said} is a file, not a folder")
    if folder and path.is_dir() and any(path.iterdir()) and not is_pipeline_folder(path):
        raise ValueError(f"{said} is a folder with other files in it (not a dico pipeline); "
                         "dico never writes into it: name a new or empty folder")
    if path.exists() and not overwrite and not (folder and not any(path.iterdir())):
        raise ValueError(f"{said} already exists; pass --overwrite to replace it")
    check_can_create(said, path.parent)  # (under a file, `path` cannot exist: the checks above pass)
