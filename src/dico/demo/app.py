"""The web demo: a Gradio page over a `DiCoPipeline`: classes to pick for a class-conditional model, a prompt box for a
text-conditioned one.

    from dico.demo import launch
    launch("results/checkpoints/0003000.pt")        # or a pipeline folder; http://127.0.0.1:7860

The page's generate function is also an API endpoint ("/generate", outputs "Samples" and "Status"), so
`gradio_client` can call it. A bad field gets one line, for the visitor and in the server's log, never a traceback.
"""

import difflib
import errno
import random
import re
import socket
import sys
import time

import gradio as gr
import torch
from PIL import Image

from ..config import SamplingOptions
from ..options import check_int, check_number
from ..pipelines import DiCoPipeline, check_guide_pipeline, load_guide_pipeline, load_pipeline

MAX_IMAGES = 64  # per click: sampling runs on whatever device the server has, often a CPU
MAX_STEPS = 1000
MAX_GUIDANCE = 10.0
MAX_SEED = 2**32 - 1  # well inside what a browser's number field holds exactly (2**53)
MIN_DISPLAY_SIDE = 128  # small images (8x8 digits) are enlarged by pixel repetition so they stay crisp
FIELD_LABELS = {"classes": "Classes", "per_class": "Images per class", "cfg_scale": "Guidance scale",
                "guidance_scale": "Guidance scale", "steps": "Steps", "num_inference_steps": "Steps",
                "sampler": "Sampler", "seed": "Seed", "random_seed": "Random seed", "prompts": "Prompts",
                "per_prompt": "Images per prompt"}  # the page's words for a check's


def class_choices(pipe: DiCoPipeline) -> list:
    """One readable name per class id (the first of its synonyms), in id order."""
    id2label = pipe.config.id2label
    return [id2label[k].split(",")[0].strip() for k in sorted(id2label, key=int)]


def enlarge(image: Image.Image) -> Image.Image:
    factor = max(1, -(-MIN_DISPLAY_SIDE // max(image.size)))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST) if factor > 1 else image


def sampler_pipelines(pipe: DiCoPipeline) -> dict:
    """One pipeline per sampler the model's objective offers, sharing the network and VAE: a request never changes
    another's scheduler."""
    base = pipe.scheduler.config
    return {name: pipe.with_scheduler(make(base)) for name, make in pipe.objective.pipeline_samplers().items()}


def generate_images(pipes: dict, classes, per_class, guidance_scale, steps, sampler, seed, random_seed,
                    progress=None, guide=None):
    """(gallery [(image, caption)], status text) for the page. A bad field raises gr.Error with one line saying what
    to change (no traceback), and the server's log gets that line too. `guide`: a guide transformer (autoguidance)."""
    try:
        labels, guidance_scale, steps, seed = checked_request(pipes, classes, per_class, guidance_scale, steps,
                                                              sampler, seed, random_seed)
    except ValueError as err:
        message = visitor_words(str(err))
        print(f"dico demo: rejected a request: {message}", file=sys.stderr, flush=True)
        raise gr.Error(message, print_exception=False) from None
    pipe = pipes[sampler]

    def report(pipeline, step, timestep, tensors):
        if progress is not None:
            progress((step + 1, steps), desc="denoising", unit="steps")
        return tensors

    start = time.perf_counter()
    images = pipe(labels, guidance_scale=guidance_scale, num_inference_steps=steps, seed=seed,
                  callback_on_step_end=report, guide_transformer=guide).images
    seconds = time.perf_counter() - start
    names = class_choices(pipe)
    gallery = [(enlarge(image), names[label]) for image, label in zip(images, labels)]
    status = (f"{len(images)} images in {seconds:.1f} s, {sampler}, {steps} steps, "
              f"{'autoguidance' if guide is not None else 'guidance'} {guidance_scale:g}, "
              f"seed {seed} (image i of this click is reproduced by `seed={seed}` with the same labels)")
    return gallery, status


def checked_request(pipes: dict, classes, per_class, guidance_scale, steps, sampler, seed, random_seed) -> tuple:
    """(class ids, one per image; guidance scale; steps; seed) of a request, or a ValueError worded as the command
    line's checks (`--steps must be an integer in [1, 1000], got 2.5`). Every field is checked before any work.

    Values arrive as the browser or an API client sent them: the event skips Gradio's own preprocessing, which rounds
    2.5 steps to 2 and fails on text with a message that says nothing."""
    classes = [classes] if isinstance(classes, str) else classes
    if not isinstance(classes, (list, tuple)) or not classes:
        raise ValueError(f"--classes must name at least one class, got {classes!r}")
    per_class, guidance_scale, steps, seed = checked_settings(pipes, per_class, guidance_scale, steps, sampler, seed,
                                                              random_seed)
    known = pipes[sampler].labels  # every synonym of every class
    for name in classes:
        if not isinstance(name, str) or name not in known:
            close = difflib.get_close_matches(str(name), known, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"--classes: {name!r} is not a class of this model{hint}")
    if per_class * len(classes) > MAX_IMAGES:
        raise ValueError(f"--per-class: {per_class} images x {len(classes)} classes is {per_class * len(classes)} "
                         f"images; at most {MAX_IMAGES} per click")
    SamplingOptions(steps=steps, cfg_scale=float(guidance_scale), seed=seed)  # the command line's own checks too
    labels = [c for c in pipes[sampler].get_label_ids(list(classes)) for _ in range(per_class)]
    return labels, float(guidance_scale), steps, seed


def checked_settings(pipes: dict, per_condition, guidance_scale, steps, sampler, seed, random_seed,
                     per_name: str = "per_class") -> tuple:
    """(images per condition, guidance scale, steps, seed) of a request, checked as checked_request says."""
    per_condition, guidance_scale, steps, seed = map(as_number, (per_condition, guidance_scale, steps, seed))
    check_int(per_name, per_condition, 1, MAX_IMAGES)
    check_number("cfg_scale", guidance_scale, 1.0, MAX_GUIDANCE)
    check_int("steps", steps, 1, MAX_STEPS)
    if not isinstance(random_seed, bool):
        raise ValueError(f"--random-seed must be true or false, got {random_seed!r}")
    if random_seed:
        seed = random.randrange(2**31)
    check_int("seed", seed, 0, MAX_SEED)
    if sampler not in pipes:
        raise ValueError(f"--sampler must be one of {', '.join(pipes)}, got {sampler!r}")
    return per_condition, guidance_scale, steps, seed


def checked_text_request(pipes: dict, prompts, per_prompt, guidance_scale, steps, sampler, seed,
                         random_seed) -> tuple:
    """(prompts, one per image; guidance scale; steps; seed) of a text model's request: `prompts` is the box's
    text, one prompt per line (blank lines skipped); the other fields as checked_request checks them."""
    if not isinstance(prompts, str) or not prompts.strip():
        raise ValueError(f"--prompts must hold at least one prompt (one per line), got {prompts!r}")
    lines = [line.strip() for line in prompts.splitlines() if line.strip()]
    per_prompt, guidance_scale, steps, seed = checked_settings(pipes, per_prompt, guidance_scale, steps, sampler,
                                                               seed, random_seed, per_name="per_prompt")
    if per_prompt * len(lines) > MAX_IMAGES:
        raise ValueError(f"--per-prompt: {per_prompt} images x {len(lines)} prompts is {per_prompt * len(lines)} "
                         f"images; at most {MAX_IMAGES} per click")
    SamplingOptions(steps=steps, cfg_scale=float(guidance_scale), seed=seed)
    return [line for line in lines for _ in range(per_prompt)], float(guidance_scale), steps, seed


def generate_text_images(pipes: dict, prompts, per_prompt, guidance_scale, steps, sampler, seed, random_seed,
                         progress=None, guide=None):
    """generate_images for a text model: (gallery [(image, its prompt)], status text)."""
    try:
        prompts, guidance_scale, steps, seed = checked_text_request(pipes, prompts, per_prompt, guidance_scale,
                                                                    steps, sampler, seed, random_seed)
    except ValueError as err:
        message = visitor_words(str(err))
        print(f"dico demo: rejected a request: {message}", file=sys.stderr, flush=True)
        raise gr.Error(message, print_exception=False) from None

    def report(pipeline, step, timestep, tensors):
        if progress is not None:
            progress((step + 1, steps), desc="denoising", unit="steps")
        return tensors

    start = time.perf_counter()
    images = pipes[sampler](prompt=prompts, guidance_scale=guidance_scale, num_inference_steps=steps, seed=seed,
                            callback_on_step_end=report, guide_transformer=guide).images
    seconds = time.perf_counter() - start
    gallery = [(enlarge(image), prompt) for image, prompt in zip(images, prompts)]
    status = (f"{len(images)} images in {seconds:.1f} s, {sampler}, {steps} steps, "
              f"{'autoguidance' if guide is not None else 'guidance'} {guidance_scale:g}, "
              f"seed {seed} (image i of this click is reproduced by `seed={seed}` with the same prompts)")
    return gallery, status


def as_number(value):
    """A field's value as a number where it is one: text such as "2.5" or "nan" is read, a whole float (7.0, as JSON
    may carry 7) becomes an int; anything else is returned unchanged, for the checks to name."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def visitor_words(message: str) -> str:
    """A check's message with the flag it names (`--steps`, `--cfg-scale (guidance_scale)`) replaced by the label of
    the page's field: "Steps must be an integer in [1, 1000], got 2.5"."""
    match = re.match(r"--([a-z0-9-]+)(?: \([a-z_]+\))?", message)
    label = FIELD_LABELS.get(match[1].replace("-", "_")) if match else None
    return label + message[match.end():] if label else message


def build_demo(pipeline_or_source, device=None, name: str | None = None, vae=None, guide=None,
               guide_name: str | None = None) -> gr.Blocks:
    """The demo page for a DiCoPipeline, a pipeline folder or any checkpoint `dico sample` reads (official ones need
    the model `name`, e.g. "DiCo-XL"; `vae` overrides a latent model's decoder). `guide` (a DiCoPipeline, folder or
    checkpoint; official ones are inferred or named by `guide_name`) makes the guidance scale autoguidance."""
    pipe = pipeline_or_source
    if not isinstance(pipe, DiCoPipeline):
        pipe = load_pipeline(pipeline_or_source, name=name, vae=vae)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = pipe.to(device)
    guide_model = None
    if guide is not None:
        if isinstance(guide, DiCoPipeline):
            check_guide_pipeline(pipe, guide)
            guide_pipe = guide
        else:
            guide_pipe = load_guide_pipeline(pipe, guide, guide_name)
        guide_model = guide_pipe.transformer.to(device)
    pipes = sampler_pipelines(pipe)
    for each in pipes.values():
        each.set_progress_bar_config(disable=True)
    model = pipe.transformer
    text = pipe.is_text
    generate = generate_text_images if text else generate_images

    def run(condition, per_condition, guidance_scale, steps, sampler, seed, random_seed, progress=gr.Progress()):
        return generate(pipes, condition, per_condition, guidance_scale, steps, sampler, seed, random_seed, progress,
                        guide_model)

    if text:
        title = "text-to-image"
        conditioned = (f"prompts encoded by `{type(pipe.text_encoder).__name__}` "
                       f"(`{pipe.config.text_encoder_name}`, {pipe.config.text_length} tokens)")
    else:
        choices = class_choices(pipe)
        title, conditioned = "class-conditional images", f"{len(choices)} classes"
    with gr.Blocks(title="DiCo demo", analytics_enabled=False) as demo:  # a local page: nothing sent anywhere
        gr.Markdown(f"# DiCo: {title}\n`{type(model).__name__}` "
                    f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters), {conditioned}, "
                    f"{'latent' if pipe.vae is not None else 'pixel'} space, running on {device}." +
                    ("" if guide_model is None else f" Guidance is autoguidance by `{type(guide_model).__name__}` "
                     f"({sum(p.numel() for p in guide_model.parameters()) / 1e6:.2f}M parameters)."))
        with gr.Row():
            with gr.Column(scale=1):
                if text:  # a text model has no classes to pick: a box of prompts instead
                    condition = gr.Textbox(value="", lines=3, label="Prompts", elem_id="prompts",
                                           placeholder="one prompt per line", info="one prompt per line")
                    per_condition = gr.Number(value=4, precision=0, label="Images per prompt", elem_id="per_prompt")
                else:
                    condition = gr.Dropdown(choices, value=choices[:1], multiselect=True, filterable=True,
                                            label="Classes", info="type to search", elem_id="classes")
                    per_condition = gr.Number(value=4, precision=0, label="Images per class", elem_id="per_class")
                guidance = gr.Slider(1.0, MAX_GUIDANCE, value=1.5, step=0.1, label="Guidance scale",
                                     info="1 = off; the official protocol uses 1.5", elem_id="guidance")
                steps = gr.Number(value=250, precision=0, label="Steps", info=f"1 to {MAX_STEPS}; official: 250 "
                                  "(DDPM); DPM-Solver++ needs about 25", elem_id="steps")
                sampler = gr.Radio(list(pipes), value=next(iter(pipes)), label="Sampler", elem_id="sampler")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Seed", info=f"0 to {MAX_SEED}", elem_id="seed")
                    random_seed = gr.Checkbox(value=False, label="Random seed", elem_id="random_seed")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Samples", columns=8, format="png", elem_id="gallery")
                status = gr.Markdown(label="Status", elem_id="status")  # the label names the API's output
        # preprocess=False: the fields reach checked_request as sent (Gradio's own step would round 2.5 steps to 2
        # and meet text with a bare "Error"); the outputs are still converted for the page.
        button.click(run, [condition, per_condition, guidance, steps, sampler, seed, random_seed], [gallery, status],
                     api_name="generate", preprocess=False,
                     api_description=f"Sample images of the {'prompts' if text else 'chosen classes'}")
    return demo


def launch(source, port: int = 7860, host: str = "127.0.0.1", device=None, name: str | None = None, vae=None,
           share: bool = False, prevent_thread_lock: bool = False, guide=None, guide_name: str | None = None,
           **launch_kwargs) -> gr.Blocks:
    """Serve the demo for a checkpoint or pipeline folder at http://host:port; blocks until stopped unless
    `prevent_thread_lock` (then `demo.close()` stops it). A port in use is an OSError naming --port, raised before
    the model is loaded. Gradio's start-up chatter is left out (quiet): its advice to set share=True does not apply
    to `dico demo`, which has no such flag; the address is printed once."""
    check_port_free(host, port)
    demo = build_demo(source, device, name=name, vae=vae, guide=guide, guide_name=guide_name)
    try:
        demo.queue().launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True,
                            **{"quiet": True, **launch_kwargs})
    except OSError:  # taken between the check and the start
        check_port_free(host, port)
        raise
    print(f"dico demo: serving on {demo.local_url}" + ("" if prevent_thread_lock else " (Ctrl+C stops it)"),
          flush=True)
    if demo.share_url:
        print(f"dico demo: public link {demo.share_url}", flush=True)
    if not prevent_thread_lock:
        demo.block_thread()
    return demo


def check_port_free(host: str, port: int) -> None:
    """A ValueError or OSError naming --port (or --host) unless a server could listen at host:port now."""
    check_int("port", port, 1, 65535)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise OSError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no obstacle
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise OSError(f"--port {port}: {host}:{port} is in use (another server?); choose a free port with "
                              f"--port N") from None
            if err.errno == errno.EACCES:
                raise OSError(f"--port {port}: no permission to serve on {host}:{port} (ports below 1024 need "
                              f"root); choose a port above 1023 with --port N") from None
            raise OSError(f"--host {host}: cannot serve on {host}:{port} ({err.strerror})") from None
