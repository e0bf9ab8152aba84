"""The web demo: a Gradio page over a `DiCoPipeline`.

    from dico.demo import launch
    launch("results/checkpoints/0003000.pt")        # or a pipeline folder; http://127.0.0.1:7860

The page's generate function is also an API endpoint ("/generate"), so `gradio_client` can call it.
"""

import random
import time

import gradio as gr
import torch
from PIL import Image

from ..pipelines import DiCoPipeline, load_pipeline

MAX_IMAGES = 64  # per click: sampling runs on whatever device the server has, often a CPU
MAX_STEPS = 1000
MAX_GUIDANCE = 10.0
MIN_DISPLAY_SIDE = 128  # small images (8x8 digits) are enlarged by pixel repetition so they stay crisp


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
    return {name: DiCoPipeline(transformer=pipe.transformer, vae=pipe.vae, scheduler=make(base),
                               id2label=pipe.config.id2label, sample_size=pipe.config.sample_size,
                               latent_scale=pipe.config.latent_scale, objective=pipe.config.objective)
            for name, make in pipe.objective.pipeline_samplers().items()}


def generate_images(pipes: dict, classes, per_class, guidance_scale, steps, sampler, seed, random_seed,
                    progress=None):
    """(gallery [(image, caption)], status text) for the page; bad input raises gr.Error with what to change."""
    if not classes:
        raise gr.Error("Pick at least one class.")
    classes = [classes] if isinstance(classes, str) else list(classes)
    per_class = whole_number(per_class, "Images per class")
    steps = whole_number(steps, "Steps")
    if per_class < 1:
        raise gr.Error("Images per class must be at least 1.")
    if per_class * len(classes) > MAX_IMAGES:
        raise gr.Error(f"{per_class} images x {len(classes)} classes is {per_class * len(classes)} images; "
                       f"at most {MAX_IMAGES} per click.")
    if not 1 <= steps <= MAX_STEPS:
        raise gr.Error(f"Steps must lie between 1 and {MAX_STEPS} (the model was trained on {MAX_STEPS} noise "
                       f"levels), got {steps}.")
    if guidance_scale is None or not 1.0 <= float(guidance_scale) <= MAX_GUIDANCE:
        raise gr.Error(f"Guidance scale must lie between 1 (off) and {MAX_GUIDANCE:g}, got {guidance_scale}.")
    if sampler not in pipes:
        raise gr.Error(f"Unknown sampler {sampler!r}; choose one of {', '.join(pipes)}.")
    pipe = pipes[sampler]
    try:
        labels = [c for c in pipe.get_label_ids(classes) for _ in range(per_class)]
    except ValueError as err:
        raise gr.Error(str(err)) from None
    seed = random.randrange(2**31) if random_seed else whole_number(seed, "Seed")
    if seed < 0:
        raise gr.Error("Seed must be 0 or more.")

    def report(pipeline, step, timestep, tensors):
        if progress is not None:
            progress((step + 1, steps), desc="denoising", unit="steps")
        return tensors

    start = time.perf_counter()
    images = pipe(labels, guidance_scale=float(guidance_scale), num_inference_steps=steps, seed=seed,
                  callback_on_step_end=report).images
    seconds = time.perf_counter() - start
    names = class_choices(pipe)
    gallery = [(enlarge(image), names[label]) for image, label in zip(images, labels)]
    status = (f"{len(images)} images in {seconds:.1f} s, {sampler}, {steps} steps, guidance {float(guidance_scale):g}, "
              f"seed {seed} (image i of this click is reproduced by `seed={seed}` with the same labels)")
    return gallery, status


def whole_number(value, what: str) -> int:
    if value is None or float(value) != int(float(value)):
        raise gr.Error(f"{what} must be a whole number, got {value!r}.")
    return int(float(value))


def build_demo(pipeline_or_source, device=None, name: str | None = None, vae=None) -> gr.Blocks:
    """The demo page for a DiCoPipeline, a pipeline folder or any checkpoint `dico sample` reads (official ones need
    the model `name`, e.g. "DiCo-XL"; `vae` overrides a latent model's decoder)."""
    pipe = pipeline_or_source
    if not isinstance(pipe, DiCoPipeline):
        pipe = load_pipeline(pipeline_or_source, name=name, vae=vae)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = pipe.to(device)
    pipes = sampler_pipelines(pipe)
    for each in pipes.values():
        each.set_progress_bar_config(disable=True)
    choices = class_choices(pipe)
    model = pipe.transformer

    def run(classes, per_class, guidance_scale, steps, sampler, seed, random_seed, progress=gr.Progress()):
        return generate_images(pipes, classes, per_class, guidance_scale, steps, sampler, seed, random_seed, progress)

    with gr.Blocks(title="DiCo demo", analytics_enabled=False) as demo:  # a local page: nothing sent anywhere
        gr.Markdown(f"# DiCo: class-conditional images\n`{type(model).__name__}` "
                    f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters), {len(choices)} classes, "
                    f"{'latent' if pipe.vae is not None else 'pixel'} space, running on {device}.")
        with gr.Row():
            with gr.Column(scale=1):
                classes = gr.Dropdown(choices, value=choices[:1], multiselect=True, filterable=True,
                                      label="Classes", info="type to search", elem_id="classes")
                per_class = gr.Number(value=4, precision=0, label="Images per class", elem_id="per_class")
                guidance = gr.Slider(1.0, MAX_GUIDANCE, value=1.5, step=0.1, label="Guidance scale",
                                     info="1 = off; the official protocol uses 1.5", elem_id="guidance")
                steps = gr.Number(value=250, precision=0, label="Steps", info=f"1 to {MAX_STEPS}; official: 250 "
                                  "(DDPM); DPM-Solver++ needs about 25", elem_id="steps")
                sampler = gr.Radio(list(pipes), value=next(iter(pipes)), label="Sampler", elem_id="sampler")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                    random_seed = gr.Checkbox(value=False, label="Random seed", elem_id="random_seed")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Samples", columns=8, format="png", elem_id="gallery")
                status = gr.Markdown(elem_id="status")
        button.click(run, [classes, per_class, guidance, steps, sampler, seed, random_seed], [gallery, status],
                     api_name="generate")
    return demo


def launch(source, port: int = 7860, host: str = "127.0.0.1", device=None, name: str | None = None, vae=None,
           share: bool = False, **launch_kwargs) -> gr.Blocks:
    """Serve the demo for a checkpoint or pipeline folder at http://host:port (blocks until stopped, unless
    prevent_thread_lock=True is passed on to Gradio's launch)."""
    demo = build_demo(source, device, name=name, vae=vae)
    demo.queue().launch(server_name=host, server_port=port, share=share, **launch_kwargs)
    return demo
