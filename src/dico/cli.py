"""The `dico` command: each subcommand is a thin shell over a library function.

A command's flags are the fields of one dataclass (dico.config), turned into a parser by tyro (field comments are the
help, every default is shown). Every command also takes `--config FILE.yaml` (field values; the flags typed win) and
`--print-config` (print the resolved options as YAML and exit); `dico --debug CMD ...` shows tracebacks.

dico.config imports no torch, and a command's module (dico.commands.*, which does) is imported only when the command
runs, so `dico --help` and `dico CMD --help` answer without loading torch.
"""

from . import interrupts

interrupts.install()  # first: the imports below take a second or more, and a signal there must stop `dico` alike

import contextlib
import difflib
import importlib
import inspect
import sys
from dataclasses import MISSING, dataclass, fields

import tyro

from .config import (BenchCommand, ConvertConfig, DemoConfig, EvaluateConfig, ExportDataConfig, ExtractLatentsConfig,
                     InfoConfig, SampleConfig, TrainCommand)
from .config.ema import ReconstructConfig, SweepConfig
from .options import read_yaml, to_yaml, with_values
from .cpu_allocator import tune_glibc_malloc
from .extras import MissingExtra
from .interrupts import exit_code, message, received, signal_of, stop_if_signalled, stop_on_signals


@dataclass(frozen=True)
class Command:
    options: type  # the dataclass whose fields are the flags
    module: str  # dico.commands.*: run(options, **prepared) -> exit code
    help: str
    prepares: bool = False  # the module has prepare(args, file values, file name) -> (default options, kwargs for run)


COMMANDS = {
    "train": Command(TrainCommand, "dico.commands.train", "train a model (no --data: the digits demo on CPU)",
                     prepares=True),
    "sample": Command(SampleConfig, "dico.commands.sample", "sample images from a checkpoint (PNG grid or ADM .npz)"),
    "evaluate": Command(EvaluateConfig, "dico.commands.evaluate",
                        "FID, sFID, Inception Score, precision and recall of samples against a reference"),
    "info": Command(InfoConfig, "dico.commands.info", "parameters and GMACs (the paper's GFLOPs) per model"),
    "bench": Command(BenchCommand, "dico.commands.bench",
                     "throughput of forward / training step / sampling, side by side"),
    "convert": Command(ConvertConfig, "dico.commands.convert",
                       "write a checkpoint's weights as .safetensors, or as a diffusers pipeline folder"),
    "demo": Command(DemoConfig, "dico.commands.demo", "a web page (Gradio) that samples a model by class name"),
    "extract-latents": Command(ExtractLatentsConfig, "dico.commands.extract_latents",
                               "encode an image folder with the SD VAE once, for latent training"),
    "export-data": Command(ExportDataConfig, "dico.commands.export_data",
                           "write a bundled data set as an ADM-format .npz (FID reference)"),
    # A command group: `dico ema reconstruct ...` (command_name joins the two words).
    "ema reconstruct": Command(ReconstructConfig, "dico.commands.ema",
                               "post-hoc EMA: rebuild a power-function EMA from a run's snapshots"),
    "ema sweep": Command(SweepConfig, "dico.commands.ema",
                         "post-hoc EMA: rebuild, sample and evaluate a range of EMA lengths"),
}

CONFIG_FLAGS_HELP = ("Every command also takes --config FILE.yaml (option values, e.g. from --print-config; flags "
                     "typed win), --print-config (print the resolved options as YAML and exit) and --debug (show "
                     "tracebacks).")
# What the user asked for cannot be done (bad values or files, a full disk, a diverging run): one line and exit 2.
# Anything else is a bug: a short note and exit 1. dico.checkpoints.CheckpointError is a ValueError and
# dico.training.NonFiniteError an ArithmeticError; MissingExtra names the pip line that installs an optional part.
INPUT_ERRORS = (ValueError, OSError, ArithmeticError, MissingExtra)
BUGS = (ZeroDivisionError,)


def top_help() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: dico [--debug] COMMAND [options]", "", "DiCo: train, sample, evaluate and benchmark.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help  show this help and exit",
              "  --debug     show the traceback of an error (also accepted after the command)", "",
              "`dico COMMAND --help` lists a command's options and their defaults. " + CONFIG_FLAGS_HELP]
    return "\n".join(lines)


def split_config_flags(args: list) -> tuple:
    """(--config path or None, whether --print-config was given, the other arguments)."""
    path, print_config, rest = None, False, []
    items = iter(args)
    for arg in items:
        if arg == "--print-config":
            print_config = True
        elif arg == "--config":
            path = next(items, None)
            if path is None:
                raise ValueError("--config needs a file")
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return path, print_config, rest


def plain_defaults(options_class):
    """An instance with the dataclass defaults; fields without one are marked required for tyro."""
    return options_class(**{f.name: tyro.MISSING for f in fields(options_class)
                            if f.default is MISSING and f.default_factory is MISSING})


def parse(name: str, args: list):
    """(options, keyword arguments for the run function, whether to print the options instead of running)."""
    name, args = command_name(name, args)
    command = COMMANDS[name]
    options_class = command.options
    path, print_config, args = split_config_flags(args)
    values = read_yaml(path) if path else {}
    source = f"--config {path}"
    if command.prepares:  # dico.commands.train: imports torch only for --resume
        default, prepared = importlib.import_module(command.module).prepare(args, values, source)
    else:
        default, prepared = with_values(plain_defaults(options_class), values, source), {}
    description = f"{inspect.cleandoc(options_class.__doc__)}\n\n{CONFIG_FLAGS_HELP}"
    with one_line_value_errors():
        options = tyro.cli(options_class, args=args, default=default, prog=f"dico {name}", description=description)
    return options, prepared, print_config


def one_line_value_errors():
    """While tyro parses: a value the options' own checks refuse (their __post_init__) is reported as every other
    input error, `dico CMD: error: MESSAGE` and exit 2, not in tyro's box. Flags tyro cannot even convert keep tyro's
    box, which shows the flag's help. The hook is tyro's (marked unstable): without it, the box."""
    hook = getattr(getattr(tyro, "_errors", None), "on_parse_error", None)
    failure = getattr(getattr(tyro, "_errors", None), "InstantiationFailure", None)
    if hook is None or failure is None:
        return contextlib.nullcontext()

    def report(event):
        if isinstance(event, failure) and event.argument is None:  # the dataclass refused the values as a whole
            print(f"{event.prog}: error: {event.message}", file=sys.stderr, flush=True)
            raise SystemExit(2)

    return hook(report)


def command_name(name: str, args: list) -> tuple:
    """(the command, its arguments): a group's command is two words, `dico ema sweep ...` -> ("ema sweep", ...)."""
    if args and f"{name} {args[0]}" in COMMANDS:
        return f"{name} {args[0]}", args[1:]
    return name, args


def training_interrupted(err: Exception) -> bool:
    """Whether `err` is dico.training.TrainingInterrupted (SIGINT/SIGTERM stopped a run after saving)."""
    loop = sys.modules.get("dico.training.loop")  # only a loaded training loop raises it: no torch import here
    return loop is not None and isinstance(err, loop.TrainingInterrupted)


def main(argv=None) -> int:
    """Run `dico ARGS...` (argv None: the program's own arguments) and return its exit code. SIGINT and SIGTERM stop
    any command as one line, exit 130 or 143 (dico.interrupts); once the program (argv None) has finished, they are
    ignored while Python exits, so they cannot turn a completed command into a failed one."""
    try:
        with stop_on_signals(then_ignore=argv is None):
            return run_command(argv)
    except KeyboardInterrupt as stop:  # one that came during start-up, or before run_command's own try
        words = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--debug"][:1]
        print(" ".join(["dico", *words]) + f": {message(signal_of(stop))}", file=sys.stderr)
        return exit_code(signal_of(stop))


def run_command(argv) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if not args or args[0] in ("-h", "--help"):
        print(top_help(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    name, args = command_name(args[0], args[1:])
    group = [c.split(" ", 1)[1] for c in COMMANDS if c.startswith(f"{name} ")]
    if name not in COMMANDS and group:
        print(f"dico {name}: error: choose one of {', '.join(group)} (dico {name} {group[0]} --help)", file=sys.stderr)
        return 2
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"dico: error: unknown command {name!r}{hint}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        options, prepared, print_config = parse(name, args)
        if print_config:
            print(to_yaml(options), end="")
            return 0
        if getattr(options, "tune_malloc", True):  # our process: keep freed CPU memory for reuse (dico.cpu_allocator)
            tune_glibc_malloc()
        code = importlib.import_module(COMMANDS[name].module).run(options, **prepared) or 0
        stop_if_signalled()  # a signal that a library swallowed ("Exception ignored ...") still stops the command
        return code
    except KeyboardInterrupt as stop:
        if debug:
            raise
        print(f"dico {name}: {message(signal_of(stop))}", file=sys.stderr)
        return exit_code(signal_of(stop))
    except Exception as err:
        if debug:
            raise
        if training_interrupted(err):  # a consistent checkpoint is saved: a message, not a traceback
            print(f"dico {name}: {err}", file=sys.stderr)
            return 128 + err.signum
        if received() is not None:  # what a signal left behind (e.g. a half-imported module): it is the news
            print(f"dico {name}: {message(received())}", file=sys.stderr)
            return exit_code(received())
        if isinstance(err, INPUT_ERRORS) and not isinstance(err, BUGS):
            print(f"dico {name}: error: {err}", file=sys.stderr)
            return 2
        print(f"dico {name}: error: {type(err).__name__}: {err}\n(an unexpected error: rerun with dico --debug "
              f"{name} ... for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
