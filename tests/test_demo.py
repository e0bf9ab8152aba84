"""The web demo against a live local server: through gradio_client and in a real headless browser (chromium)."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402
from PIL import Image  # noqa: E402

from dico.cli import main as cli  # noqa: E402
from dico.demo import build_demo, launch  # noqa: E402
from dico.models import build_model, model_spec  # noqa: E402
from dico.objectives import DDPMObjective  # noqa: E402
from dico.pipelines import pipeline_from_network, save_pipeline  # noqa: E402
from dico.sampling import OutputSpace  # noqa: E402
from helpers import save_tiny_checkpoint  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
SAMPLERS = list(DDPMObjective().pipeline_samplers())  # the page's sampler names for a DDPM model
DDPM, DDIM, DPM = SAMPLERS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveDemo:
    """The demo served by dico.demo.launch on 127.0.0.1 at a free port, in this process; `close` always shuts it
    down."""

    def __init__(self, source):
        self.port = free_port()
        self.demo = launch(source, port=self.port, device="cpu", prevent_thread_lock=True)
        self.url = f"http://127.0.0.1:{self.port}/"

    def client(self) -> Client:
        return Client(self.url, verbose=False)

    def close(self):
        self.demo.close()


def artifact(tmp_path: Path, name: str) -> Path:
    """Where a test saves a screenshot: pytest's tmp dir, copied to $DICO_TEST_ARTIFACTS when set."""
    return tmp_path / name


def keep(path: Path) -> None:
    print(f"screenshot: {path}")
    target = os.environ.get("DICO_TEST_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
        print(f"screenshot copied to {Path(target) / path.name}")


def gallery_images(gallery) -> list:
    return [(np.asarray(Image.open(item["image"]).convert("RGB")), item["caption"]) for item in gallery]


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory):
    """A digits-shaped pixel DiCo with random non-zero weights, written as a pipeline folder (fast, untrained)."""
    network = build_model(model_spec("DiCo-Tiny", in_channels=1, num_classes=10, hidden_size=16, depth=[1, 1, 1, 1, 1]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    pipe = pipeline_from_network(network.eval(), OutputSpace(8, 1))
    folder = tmp_path_factory.mktemp("demo") / "pipeline"
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def live(pipeline_folder):
    server = LiveDemo(pipeline_folder)
    try:
        yield server
    finally:
        server.close()


def test_generate_endpoint_returns_the_requested_images(live):
    gallery, status = live.client().predict(["3", "7"], 2, 2.0, 20, DDPM, 5, False, api_name="/generate")
    got = gallery_images(gallery)
    assert [caption for _, caption in got] == ["3", "3", "7", "7"]
    assert all(image.shape == (128, 128, 3) for image, _ in got)  # 8x8 digits enlarged 16x by pixel repetition
    assert "4 images" in status and "seed 5" in status
    # Same settings, same images: the page's seed is dico's seed.
    again, _ = live.client().predict(["3", "7"], 2, 2.0, 20, DDPM, 5, False, api_name="/generate")
    for (a, _), (b, _) in zip(got, gallery_images(again)):
        np.testing.assert_array_equal(a, b)


def test_every_sampler_and_a_random_seed_run(live):
    client = live.client()
    for sampler in SAMPLERS:
        gallery, status = client.predict(["0"], 1, 1.5, 8, sampler, 0, True, api_name="/generate")
        assert len(gallery) == 1 and sampler in status
    seeds = {client.predict(["1"], 1, 1.0, 2, DDIM, 0, True, api_name="/generate")[1].split("seed ")[1].split()[0]
             for _ in range(3)}
    assert len(seeds) > 1  # "random" draws a new seed per click, and the page says which


BAD_REQUESTS = [  # (the fields as an API client may send them, what the visitor reads: one line)
    (([], 2, 1.5, 20, DDPM, 0, False), "Classes must name at least one class, got []"),
    ((["3", "eleven"], 2, 1.5, 20, DDPM, 0, False), "Classes: 'eleven' is not a class of this model"),
    ((["3"], 0, 1.5, 20, DDPM, 0, False), "Images per class must be an integer in [1, 64], got 0"),
    ((["3"], "two", 1.5, 20, DDPM, 0, False), "Images per class must be an integer in [1, 64], got 'two'"),
    ((["3"], 1.5, 1.5, 20, DDPM, 0, False), "Images per class must be an integer in [1, 64], got 1.5"),
    ((["3"], None, 1.5, 20, DDPM, 0, False), "Images per class must be an integer in [1, 64], got None"),
    ((["3", "4"], 40, 1.5, 20, DDPM, 0, False), "Images per class: 40 images x 2 classes is 80 images; at most 64 "
                                                "per click"),
    ((["3"], 2, "nan", 20, DDPM, 0, False), "Guidance scale must be a finite number >= 1.0 and <= 10.0, got nan"),
    ((["3"], 2, -1.5, 20, DDPM, 0, False), "Guidance scale must be a finite number >= 1.0 and <= 10.0, got -1.5"),
    ((["3"], 2, 50.0, 20, DDPM, 0, False), "Guidance scale must be a finite number >= 1.0 and <= 10.0, got 50"),
    ((["3"], 2, "strong", 20, DDPM, 0, False), "Guidance scale must be a finite number >= 1.0 and <= 10.0, got "
                                               "'strong'"),
    ((["3"], 2, 1.5, "abc", DDPM, 0, False), "Steps must be an integer in [1, 1000], got 'abc'"),
    ((["3"], 2, 1.5, 2.5, DDPM, 0, False), "Steps must be an integer in [1, 1000], got 2.5"),  # never run as 2
    ((["3"], 2, 1.5, 0, DDPM, 0, False), "Steps must be an integer in [1, 1000], got 0"),
    ((["3"], 2, 1.5, 100000, DDPM, 0, False), "Steps must be an integer in [1, 1000], got 100000"),
    ((["3"], 2, 1.5, 20, "Euler", 0, False), f"Sampler must be one of {', '.join(SAMPLERS)}, got 'Euler'"),
    ((["3"], 1, 1.5, 20, DDPM, -4, False), "Seed must be an integer in [0, 4294967295], got -4"),
    ((["3"], 1, 1.5, 20, DDPM, 2**40, False), "Seed must be an integer in [0, 4294967295], got 1099511627776"),
    ((["3"], 1, 1.5, 20, DDPM, "lucky", False), "Seed must be an integer in [0, 4294967295], got 'lucky'"),
    ((["3"], 1, 1.5, 20, DDPM, 0, "yes"), "Random seed must be true or false, got 'yes'"),
]


@pytest.mark.parametrize("inputs, message", BAD_REQUESTS,
                         ids=[f"{i}-{message.split(' must ')[0].split(':')[0]}" for i, (_, message) in
                              enumerate(BAD_REQUESTS)])
def test_bad_input_is_one_line_for_the_visitor_and_one_in_the_log(live, inputs, message, capfd):
    from gradio_client.exceptions import AppError

    capfd.readouterr()
    with pytest.raises(AppError) as rejected:
        live.client().predict(*inputs, api_name="/generate")
    assert rejected.value.args[0] == message
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert [line for line in (out + err).splitlines() if line.strip()] == [f"dico demo: rejected a request: {message}"]


def test_a_check_in_the_command_line_s_words_reads_in_the_page_s_words():
    from dico.demo.app import visitor_words

    assert visitor_words("--cfg-scale (guidance_scale) must be a finite number >= 0, got nan") == \
        "Guidance scale must be a finite number >= 0, got nan"
    assert visitor_words("--steps must be an integer >= 1, got 2.5") == "Steps must be an integer >= 1, got 2.5"
    assert visitor_words("--eta must be a finite number >= 0, got -1") == "--eta must be a finite number >= 0, got -1"


def test_whole_numbers_and_numbers_as_text_are_taken(live):
    """A whole float is an integer (JSON may carry 7 as 7.0) and a number typed as text is read as one."""
    gallery, status = live.client().predict(["3"], 2.0, "1.5", "4", DDPM, " 5 ", False, api_name="/generate")
    assert len(gallery) == 2 and ", 4 steps, guidance 1.5, seed 5 " in status


def test_api_names_its_endpoint_inputs_and_outputs(live):
    api = live.client().view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert list(api) == ["/generate"]
    assert [p["label"] for p in api["/generate"]["parameters"]] == ["Classes", "Images per class", "Guidance scale",
                                                                     "Steps", "Sampler", "Seed", "Random seed"]
    assert [r["label"] for r in api["/generate"]["returns"]] == ["Samples", "Status"]


def test_launch_prints_its_address_and_no_advice_about_share(pipeline_folder, capfd):
    capfd.readouterr()
    server = LiveDemo(pipeline_folder)
    try:
        out, err = capfd.readouterr()
    finally:
        server.close()
    assert f"dico demo: serving on http://127.0.0.1:{server.port}/" in out
    assert "share" not in out + err and "Traceback" not in out + err


@pytest.fixture()
def occupied_port():
    """A port another server listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def test_a_port_in_use_is_one_line_naming_port(occupied_port, tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "0000001.pt")
    assert cli(["demo", "--ckpt", str(ckpt), "--port", str(occupied_port)]) == 2
    assert capsys.readouterr().err == (f"dico demo: error: --port {occupied_port}: 127.0.0.1:{occupied_port} is in "
                                       f"use (another server?); choose a free port with --port N\n")


@pytest.mark.parametrize("port", ["0", "65536"])
def test_a_port_out_of_range_is_one_line(port, tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "0000001.pt")
    assert cli(["demo", "--ckpt", str(ckpt), "--port", port]) == 2
    assert capsys.readouterr().err == f"dico demo: error: --port must be an integer in [1, 65535], got {port}\n"


def test_dico_demo_in_a_terminal_shows_one_line_per_rejected_request(tmp_path):
    """The command itself, as a user runs it: its terminal shows the address, then one line per rejected request;
    no traceback, no share=True advice."""
    from gradio_client.exceptions import AppError

    ckpt = save_tiny_checkpoint(tmp_path / "0000001.pt", class_names=[str(d) for d in range(10)])
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    server = subprocess.Popen([sys.executable, "-m", "dico.cli", "demo", "--ckpt", str(ckpt), "--port", str(port),
                               "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = server.stdout.readline()  # printed once the server listens
        assert first == f"dico demo: serving on http://127.0.0.1:{port}/ (Ctrl+C stops it)\n"
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(tmp_path / "downloads"))
        for fields in ((["3"], 2, 1.5, "abc", DDPM, 0, False), (["3"], 2, 1.5, 2.5, DDPM, 0, False)):
            with pytest.raises(AppError):
                client.predict(*fields, api_name="/generate")
        assert "1 images in" in client.predict(["3"], 1, 1.5, 2, DDPM, 0, False, api_name="/generate")[1]
    finally:
        server.terminate()
        out, err = server.communicate(timeout=60)
    terminal = first + out + err
    assert "Traceback" not in terminal and "share" not in terminal
    assert [line for line in terminal.splitlines() if "rejected" in line] == [
        "dico demo: rejected a request: Steps must be an integer in [1, 1000], got 'abc'",
        "dico demo: rejected a request: Steps must be an integer in [1, 1000], got 2.5"]


@pytest.fixture()
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium) for the browser test")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        # Debian's chromium, never a downloaded one (`playwright install` is not needed).
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def test_page_in_a_real_browser_generates_images_and_shows_bad_input(live, browser, tmp_path, capfd):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    elsewhere = []
    page.on("request", lambda r: None if r.url.startswith((live.url, "data:", "blob:")) else elsewhere.append(r.url))
    page.goto(live.url, wait_until="networkidle")
    assert page.title() == "DiCo demo"
    page.locator("#steps input").fill("20")
    page.locator("#generate").click()
    page.locator("#gallery img").first.wait_for(timeout=60_000)
    page.get_by_text("images in").first.wait_for(timeout=30_000)
    shot = artifact(tmp_path, "dico-demo.png")
    page.screenshot(path=str(shot), full_page=True)
    keep(shot)
    # What the browser decoded: the pixels of every gallery image, read back through a canvas.
    page.wait_for_function("() => [...document.querySelectorAll('#gallery img')].every(i => i.complete)")
    shown = page.locator("#gallery img").evaluate_all("""images => images.map(image => {
        const canvas = document.createElement("canvas");
        canvas.width = image.naturalWidth;
        canvas.height = image.naturalHeight;
        const context = canvas.getContext("2d");
        context.drawImage(image, 0, 0);
        return {width: image.naturalWidth, height: image.naturalHeight,
                rgba: Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data)};
    })""")
    # The page's defaults: 4 images of the first class, 8x8 digits shown enlarged to 128 x 128.
    assert [(image["width"], image["height"]) for image in shown] == [(128, 128)] * 4
    # The page's defaults (class 0, 4 per class, guidance 1.5, DDPM, seed 0) with 20 steps, through the API.
    wanted, _ = live.client().predict(["0"], 4, 1.5, 20, DDPM, 0, False, api_name="/generate")
    for shown_image, (image, _) in zip(shown, gallery_images(wanted)):
        np.testing.assert_array_equal(np.array(shown_image["rgba"], np.uint8).reshape(128, 128, 4)[..., :3], image)
    assert not elsewhere, f"the page fetched from outside the local server (fails offline): {elsewhere}"

    capfd.readouterr()
    page.locator("#steps input").fill("2.5")  # run as 2 before: Gradio rounded it
    page.locator("#generate").click()
    message = page.get_by_text("Steps must be an integer in [1, 1000], got 2.5")
    message.first.wait_for(state="visible", timeout=30_000)
    out, err = capfd.readouterr()
    assert [line for line in (out + err).splitlines() if line.strip()] == [
        "dico demo: rejected a request: Steps must be an integer in [1, 1000], got 2.5"]
    message.first.scroll_into_view_if_needed()
    page.wait_for_timeout(500)  # let the toast finish fading in before the picture
    shot = artifact(tmp_path, "dico-demo-bad-input.png")
    page.screenshot(path=str(shot))
    keep(shot)


def test_demo_builds_from_a_checkpoint_path(tmp_path):
    """The page built from a checkpoint offers the checkpoint's class names and the samplers of its objective, and
    its generate function gives the pipeline's images for the same labels, seed and sampler."""
    from diffusers import DPMSolverMultistepScheduler

    from dico.pipelines import load_pipeline

    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    path = save_tiny_checkpoint(tmp_path / "0000001.pt", std=0.05, config={"data": None}, class_names=names)
    demo = build_demo(path, device="cpu")
    assert demo.title == "DiCo demo"
    component = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert [value for _, value in component["classes"].choices] == names
    assert [value for _, value in component["sampler"].choices] == list(SAMPLERS)  # a DDPM model: DDPM's samplers

    pipe = load_pipeline(path)
    pipe.set_progress_bar_config(disable=True)
    for sampler in (DDPM, DPM):
        if sampler == DPM:
            pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        gallery, status = demo(["three", "seven"], 1, 2.0, 4, sampler, 5, False, api_name="generate")
        got = gallery_images(gallery)
        assert [caption for _, caption in got] == ["three", "seven"] and "seed 5" in status
        expected = pipe([3, 7], guidance_scale=2.0, num_inference_steps=4, seed=5).images
        for (image, _), want in zip(got, expected):
            np.testing.assert_array_equal(image[::16, ::16], np.asarray(want.convert("RGB")))  # shown 16x enlarged
            assert image.shape == (128, 128, 3)


def test_a_flow_model_gets_the_flow_matching_samplers(tmp_path):
    from dico.demo.app import generate_images, sampler_pipelines
    from dico.objectives import FlowObjective
    from dico.pipelines import load_pipeline

    path = save_tiny_checkpoint(tmp_path / "0000001.pt", objective=FlowObjective().to_dict(),
                                class_names=[str(d) for d in range(10)])
    pipes = sampler_pipelines(load_pipeline(path))
    assert list(pipes) == ["Flow matching, Euler", "Flow matching, Heun"]
    for name in pipes:
        gallery, _ = generate_images(pipes, ["3", "7"], 1, 2.0, 4, name, 0, False)
        assert [caption for _, caption in gallery] == ["3", "7"]


# --------------------------------------------------------------------------- a trained model: the right digits


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    """The digits demo model: $DICO_DEMO_CKPT if set, else DiCo-Tiny trained here for 1500 steps (the demo recipe
    cut short; its samples are already classified right)."""
    if os.environ.get("DICO_DEMO_CKPT"):
        return Path(os.environ["DICO_DEMO_CKPT"])
    from dico.training import preset, train

    results = tmp_path_factory.mktemp("digits")
    train(preset("demo", max_steps=1500, ckpt_every=1500, results_dir=str(results), grid_classes=0), progress=False)
    return sorted((results / "checkpoints").glob("*.pt"))[-1]


@pytest.mark.slow
def test_served_digits_are_the_requested_digits(trained_digits, tmp_path):
    from dico.evaluation.digits import DigitsFeatures

    folder = save_pipeline(trained_digits, tmp_path / "dico-digits")
    server = LiveDemo(folder)
    try:
        start = time.perf_counter()
        gallery, _ = server.client().predict([str(d) for d in range(10)], 4, 4.0, 50, DDPM, 0, False,
                                             api_name="/generate")
        print(f"40 digits through the live demo in {time.perf_counter() - start:.1f} s")
    finally:
        server.close()
    got = gallery_images(gallery)
    wanted = np.array([int(caption) for _, caption in got])
    predicted = DigitsFeatures()(np.stack([image for image, _ in got]))["logits"].argmax(1)
    accuracy = (predicted == wanted).mean()
    print(f"Digits classifier agrees with the requested digit on {accuracy:.0%} of the demo's samples")
    assert accuracy >= 0.8


@pytest.mark.slow
def test_converted_digits_model_makes_the_digits_of_dico_sample(trained_digits, tmp_path, monkeypatch):
    """The issue's end-to-end check: checkpoint -> pipeline folder -> diffusers' generic loader, offline -> the same
    digits as `dico sample` for the same seed."""
    from diffusers import DiffusionPipeline

    from dico.cli import main as cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = save_pipeline(trained_digits, tmp_path / "dico-digits")
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    npz = tmp_path / "dico-sample.npz"
    assert cli(["sample", "--ckpt", str(trained_digits), "--classes", ",".join(map(str, labels)), "--num-samples", "10",
                "--cfg-scale", "1.5", "--seed", "3", "--out", str(npz)]) == 0  # the defaults: 250 DDPM steps
    got = np.stack([np.asarray(image) for image in pipe(labels, seed=3).images])
    with np.load(npz) as f:
        np.testing.assert_array_equal(got, f["arr_0"])
    assert ((got > 0) & (got < 255)).mean() > 0.1  # real digits with grey edges, not saturated noise
