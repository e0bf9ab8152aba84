"""The web demo of a text-conditioned model: a prompt box instead of the class picker, through gradio_client against a
live local server and, briefly, in a real headless browser (chromium), as tests/test_demo.py does for classes."""

import numpy as np
import pytest

pytest.importorskip("gradio")
from clip_helpers import save_tiny_text_checkpoint  # noqa: E402
from test_demo import DDPM, LiveDemo, artifact, browser, gallery_images, keep  # noqa: E402, F401 (browser: fixture)

from dico.pipelines import load_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t2i-demo")
    return save_tiny_text_checkpoint(folder / "0000001.pt", folder / "tiny-clip")


@pytest.fixture(scope="module")
def live(checkpoint):
    server = LiveDemo(checkpoint)
    try:
        yield server
    finally:
        server.close()


def test_generate_takes_prompts_one_per_line_and_gives_the_pipeline_s_images(live, checkpoint):
    gallery, status = live.client().predict("three\n\n  a handwritten 7 ", 2, 2.0, 4, DDPM, 5, False,
                                            api_name="/generate")  # fmt: skip
    got = gallery_images(gallery)
    assert [caption for _, caption in got] == ["three", "three", "a handwritten 7", "a handwritten 7"]
    assert "4 images" in status and "seed 5" in status and "same prompts" in status
    pipe = load_pipeline(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(prompt=["three", "three", "a handwritten 7", "a handwritten 7"], guidance_scale=2.0,
                    num_inference_steps=4, seed=5).images  # fmt: skip
    for (image, _), want in zip(got, expected):
        assert image.shape == (128, 128, 3)  # 8x8 shown enlarged 16x
        np.testing.assert_array_equal(image[::16, ::16], np.asarray(want.convert("RGB")))


def test_api_names_the_prompt_box_and_checks_it_in_the_page_s_words(live, capfd):
    from gradio_client.exceptions import AppError

    api = live.client().view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert [p["label"] for p in api["/generate"]["parameters"]] == ["Prompts", "Images per prompt", "Guidance scale",
                                                                     "Steps", "Sampler", "Seed", "Random seed"]
    for fields, message in [
        (("  \n ", 2, 1.5, 4, DDPM, 0, False), "Prompts must hold at least one prompt (one per line), got '  \\n '"),
        ((["three"], 2, 1.5, 4, DDPM, 0, False), "Prompts must hold at least one prompt (one per line), got ['three']"),
        (("a\nb\nc", 30, 1.5, 4, DDPM, 0, False), "Images per prompt: 30 images x 3 prompts is 90 images; at most 64 "
                                                  "per click"),
        (("a", 0, 1.5, 4, DDPM, 0, False), "Images per prompt must be an integer in [1, 64], got 0"),
        (("a", 1, 1.5, 2.5, DDPM, 0, False), "Steps must be an integer in [1, 1000], got 2.5"),
    ]:
        capfd.readouterr()
        with pytest.raises(AppError) as rejected:
            live.client().predict(*fields, api_name="/generate")
        assert rejected.value.args[0] == message
        out, err = capfd.readouterr()
        assert [line for line in (out + err).splitlines() if line.strip()] == [
            f"dico demo: rejected a request: {message}"]


def test_page_in_a_real_browser_shows_a_prompt_box_and_generates(live, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(live.url, wait_until="networkidle")
    assert page.locator("#prompts textarea").count() == 1 and page.locator("#classes").count() == 0
    assert page.get_by_text("text-to-image").count() >= 1
    page.locator("#prompts textarea").fill("three\na handwritten 7")
    page.locator("#per_prompt input").fill("2")
    page.locator("#steps input").fill("4")
    page.locator("#generate").click()
    page.get_by_text("images in").first.wait_for(timeout=60_000)
    page.wait_for_function("() => [...document.querySelectorAll('#gallery img')].every(i => i.complete)")
    assert page.locator("#gallery img").count() == 4
    assert page.get_by_text("a handwritten 7").count() >= 1  # the captions are the prompts
    shot = artifact(tmp_path, "dico-demo-text.png")
    page.screenshot(path=str(shot), full_page=True)
    keep(shot)
