"""The dico command: flags generated from the options dataclasses, config files, fast help, errors."""

import dataclasses
import json
import os
import resource
import shlex
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import dico
from dico.cli import COMMANDS, main, parse
from dico.sampling import SampleConfig
from dico.training import TrainConfig, preset

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = {"hidden_size": 16, "depth": [1, 1, 1, 1, 1]}


def python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(dico.__file__).parents[1]), COLUMNS="200")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def help_text(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def help_in_a_fresh_interpreter(command: str) -> tuple:
    """(the torch modules loaded by `dico COMMAND --help` in a fresh interpreter, the CPU seconds it took from start to
    exit: unlike wall time, not stretched by whatever else the machine runs)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = python(f"import sys\nfrom dico.cli import main\ntry:\n    main({command!r}.split())\nexcept SystemExit:\n"
                  f"    pass\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode == 0, done.stderr
    seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return eval(done.stdout.strip().splitlines()[-1]), seconds


# --------------------------------------------------------------------------------------------------- fast help
@pytest.mark.parametrize("command", ["--help", *(f"{name} --help" for name in COMMANDS)])
def test_help_loads_no_torch_and_answers_fast(command):
    torch_modules, seconds = help_in_a_fresh_interpreter(command)
    assert torch_modules == []
    assert seconds < 1.0  # about 0.5 s here; torch alone would take more than 1


def test_top_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS) and "--debug" in out and "--config" in out


def flag_help(help: str) -> dict:
    """{flag: its help text} from tyro's help (one entry per option, continuation lines joined)."""
    entries, current = {}, None
    for line in help.splitlines():
        text = line.strip("│ ").strip()
        if text.startswith("--"):
            current = text.split()[0].rstrip(",")
            entries[current] = text
        elif current and text and not text.startswith(("╰", "╭")):
            entries[current] += " " + text
        else:
            current = None
    return entries


# ------------------------------------------------------------------------------------------ help shows defaults
def test_sample_help_shows_what_it_runs_by_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    entries = flag_help(help_text("sample", capsys))
    for flag, default in [("--cfg-scale", "1.0"), ("--num-samples", "None"), ("--guidance-channels", "3"),
                          ("--batch-size", "32"), ("--cache-guidance", "True")]:
        assert entries[flag].endswith(f"(default: {default})"), entries[flag]
    # method and steps follow the checkpoint's objective: the help says what that means for each.
    assert "None: ddpm for DDPM models" in entries["--method"] and "None: 250 for DDPM" in entries["--steps"]
    assert "None: 16; with --captions, one per captioned image" in entries["--num-samples"]
    assert "--no-cache-guidance" in entries["--cache-guidance"] and entries["--ckpt"].endswith("(required)")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_shows_the_default_of_every_flag(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    entries = flag_help(help_text(command, capsys))
    options = COMMANDS[command].options
    renamed = {"model_overrides": "--model-options", "sample_steps": "--steps"}
    hints = typing.get_type_hints(options, include_extras=True)
    for f in dataclasses.fields(options):
        if "Positional" in str(hints[f.name]):
            continue
        flag = renamed.get(f.name, "--" + f.name.replace("_", "-"))
        assert flag in entries, (flag, sorted(entries))
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        assert ("(required)" if required else "(default: ") in entries[flag], entries[flag]


# ------------------------------------------------------------------------------------------------ flag names kept
def readme_commands() -> list:
    """Every `dico ...` / `-m dico.cli ...` command line in README.md's code blocks, as argument lists."""
    commands, in_code, pending = [], False, ""
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        if not in_code:
            continue
        line = pending + line.split(" #")[0].strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        words = shlex.split(line) if "dico" in line else []
        for start, word in enumerate(words):
            if word == "dico" or (word == "dico.cli" and words[start - 1] == "-m"):
                commands.append(words[start + 1:])
                break
    return commands


def test_every_command_line_in_the_readme_parses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `--resume auto` looks for runs/xl/checkpoints here: none, so a fresh run
    commands = readme_commands()
    assert len(commands) >= 15 and {c[0] for c in commands if c} >= {"train", "sample", "evaluate", "bench"}
    for args in commands:
        args = [a for a in args if a != "--debug"]  # the dispatcher's flag, not the command's
        args = args[:args.index(">")] if ">" in args else args  # a shell redirection, not an argument
        if not args or "--help" in args:
            continue
        for flag_, value in zip(args, args[1:]):  # a config file a README line names comes from an earlier run
            if flag_ == "--config" and not Path(value).exists():
                Path(value).parent.mkdir(parents=True, exist_ok=True)
                Path(value).write_text("seed: 0\n")
        options, _, _ = parse(args[0], args[1:])
        assert dataclasses.is_dataclass(options), args


def test_todays_train_flags_keep_their_names():
    options, prepared, _ = parse("train", shlex.split(
        "--preset official --model DiCo-S --model-options '{\"channel_attention\": \"se\"}' --data latents "
        "--image-size 64 --vae mse --results-dir runs/s --max-steps 7 --global-batch 32 --micro-batch 8 --lr 2e-4 "
        "--betas 0.99,0.98 --weight-decay 0.01 --warmup-steps 5 --ema-decay 0.99 --seed 3 --precision bf16 "
        "--grad-checkpointing --log-every 2 --ckpt-every 4 --num-workers 1 --grid-steps 9 --grid-cfg-scale 3 "
        "--device cpu --no-progress"))
    config = options.train_config()
    assert config == preset("official", model="DiCo-S", model_overrides={"channel_attention": "se"}, data="latents",
                            image_size=64, vae="mse", results_dir="runs/s", max_steps=7, global_batch=32,
                            micro_batch=8, lr=2e-4, betas=(0.99, 0.98), weight_decay=0.01, warmup_steps=5,
                            ema_decay=0.99, seed=3, precision="bf16", grad_checkpointing=True, log_every=2,
                            ckpt_every=4, num_workers=1, grid_steps=9, grid_cfg_scale=3.0)
    assert options.device == "cpu" and options.progress is False and prepared == {"resume": None}


def test_todays_sample_flags_keep_their_names():
    options, _, _ = parse("sample", shlex.split(
        "--ckpt c.pt --model DiCo-XL --weights model --image-size 512 --num-classes 1000 --vae mse --method ddim "
        "--steps 50 --eta 0.5 --cfg-scale 4 --guidance-channels all --classes 207,360 --num-samples 8 --out s.npz "
        "--nrow 4 --batch-size 2 --seed 7 --device cpu --cache-interval 3 --cache-depth 2 --no-cache-guidance"))
    assert options == SampleConfig(
        ckpt="c.pt", model="DiCo-XL", weights="model", image_size=512, num_classes=1000, vae="mse", method="ddim",
        steps=50, eta=0.5, cfg_scale=4.0, guidance_channels="all", classes=(207, 360), num_samples=8, out="s.npz",
        nrow=4, batch_size=2, seed=7, device="cpu", cache_interval=3, cache_depth=2, cache_guidance=False)
    flow = parse("sample", shlex.split(
        "--ckpt c --out o.png --sampler sde --method Heun --guidance-interval 0.1,0.9 --atol 1e-5 --rtol 1e-4 "
        "--shift 3 --diffusion-form SBDM --diffusion-norm 2 --last-step None --last-step-size 0.1"))[0]
    assert (flow.sampler, flow.method, flow.guidance_interval, flow.shift, flow.diffusion_form, flow.last_step) == (
        "sde", "Heun", (0.1, 0.9), 3.0, "SBDM", None)
    assert parse("sample", ["--ckpt", "c", "--out", "o.png", "--guidance-channels", "4"])[0].guidance_channels == 4


def test_todays_other_flags_keep_their_names():
    bench = parse("bench", shlex.split(
        "--models DiCo-S DiT-XL/2 --tasks forward train --batch-sizes 1 4 --dtypes fp32 bf16 --image-size 64 "
        "--device cpu --repeats 2 --warmup 0 --steps 3 --cfg-scale 2 --official /x --clock cpu --threads 1 "
        "--tune-malloc --json b.json --quiet"))[0]
    assert (bench.models, bench.tasks, bench.batch_sizes, bench.dtypes, bench.sample_steps, bench.clock,
            bench.tune_malloc, bench.quiet) == (["DiCo-S", "DiT-XL/2"], ["forward", "train"], [1, 4], ["fp32", "bf16"],
                                                3, "cpu", True, True)
    evaluate = parse("evaluate", shlex.split("ref.npz s.npz --features digits --inception-weights w.pth "
                                             "--batch-size 8 --device cpu --json m.json --no-cache --quiet"))[0]
    assert (evaluate.reference, evaluate.samples, evaluate.features, evaluate.cache, evaluate.quiet) == (
        "ref.npz", "s.npz", "digits", False, True)
    assert parse("info", ["DiCo-S", "DiT-XL/2", "--image-size", "512"])[0].models == ["DiCo-S", "DiT-XL/2"]
    assert parse("info", [])[0].models == []
    convert = parse("convert", ["a.pt", "b.safetensors", "--weights", "model"])[0]
    assert (convert.source, convert.out, convert.weights) == ("a.pt", "b.safetensors", "model")
    extract = parse("extract-latents", shlex.split(
        "--data imgs --out lat --image-size 64 --vae mse --batch-size 2 --num-workers 0 --dtype float32 "
        "--device cpu --max-batches 1 --no-progress --repa-encoder dinov2-b"))[0]
    assert (extract.data, extract.dtype, extract.max_batches, extract.progress, extract.repa_encoder) == (
        "imgs", "float32", 1, False, "dinov2-b")
    assert parse("export-data", ["digits", "--out", "d.npz"])[0].name == "digits"


def test_bad_values_are_refused_by_the_parser():
    for args in (["--betas", "0.9"], ["--betas", "a,b"], ["--model-options", "[1]"], ["--precision", "fp16"]):
        with pytest.raises(SystemExit) as done:
            parse("train", args)
        assert done.value.code == 2, args


# ------------------------------------------------------------------------------- the dataclasses behind the flags
# Every sampling option with a value other than its default, as `dico sample` flags.
SAMPLING_FLAGS = {
    "method": (["--method", "ddim"], "ddim"), "steps": (["--steps", "7"], 7),
    "cfg_scale": (["--cfg-scale", "2.5"], 2.5), "guidance_channels": (["--guidance-channels", "all"], "all"),
    "guidance_interval": (["--guidance-interval", "0.25,0.75"], (0.25, 0.75)), "eta": (["--eta", "0.5"], 0.5),
    "seed": (["--seed", "11"], 11), "batch_size": (["--batch-size", "3"], 3), "sampler": (["--sampler", "sde"], "sde"),
    "atol": (["--atol", "1e-5"], 1e-5), "rtol": (["--rtol", "1e-4"], 1e-4), "shift": (["--shift", "3"], 3.0),
    "diffusion_form": (["--diffusion-form", "SBDM"], "SBDM"), "diffusion_norm": (["--diffusion-norm", "2"], 2.0),
    "last_step": (["--last-step", "Tweedie"], "Tweedie"), "last_step_size": (["--last-step-size", "0.1"], 0.1),
    "cache_interval": (["--cache-interval", "2"], 2), "cache_depth": (["--cache-depth", "2"], 2),
    "cache_guidance": (["--no-cache-guidance"], False),
}


def test_sample_config_holds_every_sampling_option_with_its_default(tmp_path, capsys, monkeypatch):
    """Every SamplingOptions field is a `dico sample` flag whose help shows its default, and `dico sample` hands the
    sampler the options the flags say (the defaults when none is typed)."""
    from dico.sampling import SamplingOptions, sample
    from helpers import save_tiny_checkpoint

    options = dataclasses.fields(SamplingOptions)
    assert set(SAMPLING_FLAGS) == {f.name for f in options}  # a new option needs a row above
    monkeypatch.setenv("COLUMNS", "200")
    entries = flag_help(help_text("sample", capsys))
    for f in options:
        flag, value = SAMPLING_FLAGS[f.name]
        assert value != f.default, f.name  # so that a flag the sampler never sees shows below
        shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else str(f.default)
        assert entries[flag[0].replace("--no-", "--")].endswith(f"(default: {shown})"), f.name

    received = []

    def sampler(model, space, indices, labels, options, *args, **kwargs):  # stands in for dico.sampling.generate
        received.append(options)
        return np.zeros((len(indices), space.resolution, space.resolution, 3), np.uint8)

    monkeypatch.setitem(sample.__globals__, "generate", sampler)
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pt")
    as_dict = lambda o: {f.name: getattr(o, f.name) for f in options}  # noqa: E731
    flags = [word for flag, _ in SAMPLING_FLAGS.values() for word in flag]
    changed = SamplingOptions(**{name: value for name, (_, value) in SAMPLING_FLAGS.items()})
    for typed, expected in ([], SamplingOptions()), (flags, changed):
        received.clear()
        assert main(["sample", "--ckpt", str(checkpoint), "--out", str(tmp_path / "s.png"), "--num-samples", "2",
                     "--device", "cpu", "--overwrite", *typed]) == 0
        assert len(received) == 1, "dico sample no longer samples through dico.sampling.generate: follow it here"
        assert as_dict(received[0]) == as_dict(expected)


def test_sample_choices_are_the_transports():
    from dico.sampling import SamplingOptions
    from dico.transport import DIFFUSION_FORMS
    from dico.transport.sampler import LAST_STEPS

    hints = typing.get_type_hints(SamplingOptions)
    assert typing.get_args(hints["diffusion_form"]) == DIFFUSION_FORMS
    assert {*typing.get_args(typing.get_args(hints["last_step"])[0]), None} == set(LAST_STEPS)


def test_train_config_choices_are_the_transports():
    from dico.transport import LOSS_WEIGHTS, PATHS, PREDICTIONS, TIME_SAMPLINGS

    hints = typing.get_type_hints(TrainConfig)
    assert typing.get_args(hints["path"]) == tuple(PATHS)
    assert typing.get_args(hints["prediction"]) == PREDICTIONS
    assert typing.get_args(hints["time_sampling"]) == TIME_SAMPLINGS
    assert {*typing.get_args(typing.get_args(hints["loss_weight"])[0]), None} == set(LOSS_WEIGHTS)


def test_bench_command_is_the_bench_config_with_process_flags():
    from dico.benchmarking import BenchConfig
    from dico.benchmarking.throughput import CLOCKS, DTYPES, TASKS
    from dico.config import BenchCommand

    assert issubclass(BenchCommand, BenchConfig)  # one declaration of the options benchmark() takes
    added = {f.name for f in dataclasses.fields(BenchCommand)} - {f.name for f in dataclasses.fields(BenchConfig)}
    assert added == {"threads", "tune_malloc", "json", "overwrite", "quiet"}
    hints = typing.get_type_hints(BenchConfig)
    assert typing.get_args(typing.get_args(hints["tasks"])[0]) == TASKS
    assert typing.get_args(typing.get_args(hints["dtypes"])[0]) == DTYPES
    assert typing.get_args(hints["clock"]) == tuple(CLOCKS)


def test_evaluate_features_are_the_library_kinds():
    from dico.config import EvaluateConfig
    from dico.evaluation import FEATURE_KINDS

    assert typing.get_args(typing.get_type_hints(EvaluateConfig)["features"]) == tuple(FEATURE_KINDS)


def test_importing_a_submodule_keeps_the_package_function_of_its_name():
    done = python("import dico.sampling.generate, dico.evaluation.evaluate\nimport dico.sampling, dico.evaluation\n"
                  "print(callable(dico.sampling.generate), callable(dico.evaluation.evaluate))")
    assert done.stdout.split() == ["True", "True"], done.stderr


# ------------------------------------------------------------------------------------ config files, print-config
def test_print_config_round_trips_through_a_config_file(tmp_path, capsys):
    args = ["--ckpt", "c.pt", "--out", "s.png", "--classes", "1,2", "--cfg-scale", "4", "--no-cache-guidance"]
    assert main(["sample", *args, "--print-config"]) == 0
    printed = capsys.readouterr().out
    values = yaml.safe_load(printed)
    assert values["method"] is None and values["guidance_interval"] == [0.0, 1.0] and values["classes"] == [1, 2]
    assert values["cfg_scale"] == 4.0 and values["cache_guidance"] is False
    path = tmp_path / "sample.yaml"
    path.write_text(printed)
    assert parse("sample", ["--config", str(path)])[0] == parse("sample", args)[0]
    # Flags typed win over the file, wherever they stand.
    assert parse("sample", ["--steps", "7", "--config", str(path)])[0].steps == 7
    assert parse("sample", [f"--config={path}", "--cfg-scale", "1.5"])[0].cfg_scale == 1.5


def test_a_config_file_may_hold_some_options_only_and_no_unknown_ones(tmp_path, capsys):
    path = tmp_path / "bench.yaml"
    path.write_text("models: [DiCo-B]\nsample_steps: 4\n")
    options = parse("bench", ["--config", str(path)])[0]
    assert options.models == ["DiCo-B"] and options.sample_steps == 4 and options.repeats == 5
    path.write_text("repeats: many\n")
    assert main(["bench", "--config", str(path)]) == 2
    assert "repeats: 'many': str is not an instance of int" in capsys.readouterr().err
    path.write_text("cfg_scale: 1e-3\ndtypes: [bf16]\n")  # YAML 1.1 reads 1e-3 as text: still a float here
    assert parse("bench", ["--config", str(path)])[0].cfg_scale == 1e-3
    path.write_text("dtypes: [fp16]\n")
    assert main(["bench", "--config", str(path)]) == 2
    path.write_text("modles: [DiCo-B]\n")
    assert main(["bench", "--config", str(path)]) == 2
    assert "unknown option(s) ['modles']" in capsys.readouterr().err
    assert main(["bench", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_presets_set_the_base_and_typed_flags_override(tmp_path):
    demo = parse("train", [])[0]
    assert demo.preset == "demo" and demo.train_config() == preset("demo")
    assert parse("train", ["--data", "latents"])[0].train_config() == preset("official", data="latents")
    h = parse("train", ["--data", "latents", "--preset", "dico-h", "--lr", "3e-4"])[0].train_config()
    assert h == preset("dico-h", data="latents", lr=3e-4) and h.betas == (0.99, 0.99)
    path = tmp_path / "run.yaml"
    path.write_text("data: latents\nmax_steps: 10\n")  # --data in the file: the official recipe too
    assert parse("train", ["--config", str(path)])[0].train_config() == preset("official", data="latents",
                                                                                max_steps=10)


# ------------------------------------------------------------------------------------------------- errors, --debug
def test_input_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    args = ["sample", "--ckpt", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.png")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("dico sample: error: ") and len(err.strip().splitlines()) == 1
    with pytest.raises(FileNotFoundError):
        main(["--debug", *args])
    with pytest.raises(FileNotFoundError):
        main([*args, "--debug"])  # also after the command


def test_unexpected_errors_say_how_to_see_the_traceback(tmp_path, capsys):
    # A model width of the wrong type fails inside torch (TypeError): not an input error the CLI knows.
    args = ["train", "--results-dir", str(tmp_path), "--model-options", '{"hidden_size": "wide"}', "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("dico train: error: TypeError") and "rerun with dico --debug train" in err
    with pytest.raises(TypeError):
        main(["--debug", *args])


def test_unknown_commands_are_refused(capsys):
    assert main(["smaple"]) == 2
    assert "did you mean sample" in capsys.readouterr().err
    assert main([]) == 2


# ------------------------------------------------------------------------------ a run's config file reruns it
def train_weights(results: Path) -> dict:
    final = sorted((results / "checkpoints").glob("*.pt"))[-1]
    return torch.load(final, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """A tiny digits run started with flags (one thread: a thread count can change float sums)."""
    results = tmp_path_factory.mktemp("first")
    assert main(["train", "--model", "DiCo-Tiny", "--model-options", json.dumps(TINY), "--max-steps", "3",
                 "--global-batch", "8", "--betas", "0.9,0.99", "--lr", "2e-3", "--results-dir", str(results),
                 "--grid-steps", "1", "--grid-classes", "2", "--grid-per-class", "1", "--no-progress",
                 "--threads", "1"]) == 0
    return results


def test_a_runs_saved_config_file_reruns_it(first_run, tmp_path):
    saved = yaml.safe_load((first_run / "config.yaml").read_text())
    assert saved["betas"] == [0.9, 0.99] and saved["lr"] == 2e-3 and saved["model_overrides"] == TINY
    assert saved == json.loads((first_run / "config.json").read_text())["train"]
    second = tmp_path / "second"
    assert main(["train", "--config", str(first_run / "config.yaml"), "--results-dir", str(second),
                 "--no-progress", "--threads", "1"]) == 0  # bit-identical at a fixed thread count
    a, b = train_weights(first_run), train_weights(second)
    assert a["step"] == b["step"] == 3
    for which in ("model", "ema"):
        assert a[which].keys() == b[which].keys()
        assert all(torch.equal(a[which][k], b[which][k]) for k in a[which]), which


def test_resuming_keeps_the_checkpoints_config_and_changes_only_what_is_typed(first_run):
    saved = yaml.safe_load((first_run / "config.yaml").read_text())
    options, prepared, _ = parse("train", ["--results-dir", str(first_run), "--resume", "auto", "--max-steps", "4"])
    assert prepared["resume"].path.name == "0000003.pt"
    assert options.train_config() == TrainConfig(**{**saved, "betas": (0.9, 0.99), "max_steps": 4})
    assert options.grid_per_class == 1 and options.lr == 2e-3  # not the demo preset's 8 and 1e-3


def test_the_sample_command_is_a_library_function(first_run, tmp_path, capsys):
    from dico.sampling import SampleConfig, sample

    checkpoint = first_run / "checkpoints" / "0000003.pt"
    config = SampleConfig(ckpt=str(checkpoint), out=str(tmp_path / "lib.npz"), steps=2, num_samples=3, classes=(4,),
                          threads=1)
    with np.load(sample(config)) as library:
        args = ["--ckpt", str(checkpoint), "--out", str(tmp_path / "cli.npz"), "--steps", "2", "--num-samples", "3",
                "--classes", "4", "--threads", "1"]
        assert parse("sample", args)[0] == dataclasses.replace(config, out=str(tmp_path / "cli.npz"))
        assert main(["sample", *args]) == 0
        with np.load(tmp_path / "cli.npz") as command:
            np.testing.assert_array_equal(library["arr_0"], command["arr_0"])
            assert list(command["arr_1"]) == [4, 4, 4]


def test_sample_help_says_what_it_does_with_an_official_checkpoint_without_model(tmp_path, capsys, monkeypatch):
    """`--model` is not required for official checkpoints: the size is inferred from the weights, as help says."""
    import argparse

    from dico.models import build_model, model_spec
    from helpers import TINY, save_tiny_vae

    text = " ".join(help_text("sample", capsys).split())
    assert "required for official" not in text and "inferred from official weights" in text
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    network = build_model(model_spec("DiCo-Tiny", in_channels=4, num_classes=10, **TINY))
    official = tmp_path / "official.pt"  # the release's layout: no spec, no output space, argparse args
    torch.save({"model": network.state_dict(), "ema": network.state_dict(),
                "args": argparse.Namespace(model="DiCo-Tiny")}, official)
    out = tmp_path / "x.png"
    code = main(["sample", "--ckpt", str(official), "--vae", str(save_tiny_vae(tmp_path / "vae")), "--image-size",
                 "32", "--steps", "2", "--num-samples", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert out.is_file()


# ------------------------------------------------------------------- values the options refuse: one line, exit 2
@pytest.mark.parametrize("args, message", [
    (["sample", "--ckpt", "x.pt", "--out", "a.png", "--cfg-scale", "nan"],
     "dico sample: error: --cfg-scale (guidance_scale) must be a finite number >= 0, got nan"),
    (["sample", "--ckpt", "x.pt", "--out", "a.png", "--seed", "-1"],
     "dico sample: error: --seed must be an integer in [0, 2**64), got -1"),
    (["train", "--threads", "0"], "dico train: error: --threads must be an integer >= 1 or auto, got 0"),
])
def test_a_value_the_options_refuse_is_one_line_not_a_box(args, message, capsys):
    with pytest.raises(SystemExit) as done:
        parse(args[0], args[1:])
    assert done.value.code == 2
    assert capsys.readouterr().err.strip() == message
