"""Text encoders: a prompt's token embeddings (the last hidden state, padded to a fixed number of tokens), the
condition text-to-image models read.

The paper follows REPA (and U-ViT before it): `openai/clip-vit-large-patch14`'s text tower, 77 tokens padded to the
maximum length with CLIPTokenizer's pad (the end-of-text token 49407), no attention mask, last hidden state 77x768.
Any other Hugging Face text encoder (T5's encoder included) loads by Hub id or from a folder written by
save_pretrained; its class comes from its config (AutoConfig), its tokenizer from its own files.

CLIP's tokenizer files are not needed: open-clip-torch ships CLIP's BPE vocabulary inside the package, and
transformers' own CLIPTokenizer is built from it, so a CLIP folder of weights alone (or a Hub CLIP whose tokenizer
cannot be fetched offline) still tokenises exactly as CLIPTokenizer does.

A local path is never looked up on the Hub: "./x", "/x", "~/x", "a/b/c" or an existing folder is a path, and a
missing one is an error. HF_HUB_OFFLINE=1 is honoured (huggingface_hub reads it); a Hub id not in the local cache
then fails in one line.
"""

import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch

from ..extras import require

DEFAULT_TEXT_ENCODER = "openai/clip-vit-large-patch14"
CLIP_BOS, CLIP_EOS = 49406, 49407  # <|startoftext|>, <|endoftext|> in CLIP's BPE vocabulary
DEFAULT_LENGTH = 77  # CLIP's context, REPA's and U-ViT's; also the default for encoders without a fixed context
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model", "vocab.txt")
PART = "text encoders"


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def is_local_text_encoder(name) -> bool:
    """Whether `name` means a folder on this machine (path syntax or an existing folder), never a Hub id."""
    name = str(name)
    return _looks_like_path(name) or Path(name).expanduser().is_dir()


def resolve_text_encoder(name_or_path) -> str:
    """The name a text encoder is recorded under: a dico alias (see dico.text.tiny) or a Hub id as given; a local
    folder as its absolute path (so a checkpoint finds it from any working directory). A local path that does not
    exist is an error, not a Hub lookup."""
    from .tiny import TEXT_ENCODER_ALIASES

    name = str(name_or_path)
    if name in TEXT_ENCODER_ALIASES:
        return name
    if is_local_text_encoder(name):
        path = Path(name).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"text encoder folder {name} does not exist; pass a Hub id (say "
                                    f"{DEFAULT_TEXT_ENCODER}) or a folder written by save_pretrained")
        return str(path.resolve())
    return name


@lru_cache(maxsize=1)
def clip_bpe_tokenizer():
    """transformers' CLIPTokenizer over the BPE vocabulary open-clip-torch ships (no download): the ids
    CLIPTokenizer gives with openai's tokenizer files, padding with <|endoftext|> as it does."""
    require("open_clip", "text", PART)
    transformers = require("transformers", "text", PART)
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    # open-clip names the two special tokens differently; their ids are the same (49406, 49407)
    renamed = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {renamed.get(token, token): index for token, index in bpe.encoder.items()}
    merges = [pair for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])]
    tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=merges)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (CLIP_BOS, CLIP_EOS, CLIP_EOS)
    return tokenizer


def _has_tokenizer_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def _hub_error(name: str, what: str, err: Exception) -> FileNotFoundError:
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return FileNotFoundError(f"could not load the {what} of text encoder {name!r} from the Hugging Face Hub or its "
                             f"local cache{offline}: {first}; download it once where there is network (`hf download "
                             f"{name}`) or pass a folder written by save_pretrained")


def _text_model_class(config, transformers):
    """The transformers class holding the text tower of `config`: CLIP's text model (from a full CLIP checkpoint
    too), the encoder alone of an encoder-decoder (T5EncoderModel, ...), else AutoModel's class."""
    kind = config.model_type
    if kind in ("clip", "clip_text_model"):
        return transformers.CLIPTextModel
    if kind in ("t5", "umt5", "mt5"):
        return {"t5": transformers.T5EncoderModel, "umt5": transformers.UMT5EncoderModel,
                "mt5": transformers.MT5EncoderModel}[kind]
    return None


@contextmanager
def quiet_transformers():
    """transformers' warnings and progress bars off meanwhile (its load report lists every weight of the parts not
    loaded, and a bar times the reading of a few hundred tensors); errors still show."""
    import transformers

    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()


class TextEncoder:
    """A frozen text tower and its tokenizer: `encode(prompts)` -> (N, length, dim) float32 token embeddings.

    CLIP towers (causal attention) run without an attention mask, as REPA / U-ViT embedded COCO: the prompt's own
    tokens never see the padding anyway, and the pad positions carry the embedding those papers trained on. Other
    encoders (bidirectional, T5) get the tokenizer's attention mask so the padding does not change the prompt's
    tokens.
    """

    def __init__(self, model, tokenizer, name: str, length: int, attention_mask: bool, tokenizer_source: str):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name, self.length = name, int(length)
        self.attention_mask, self.tokenizer_source = attention_mask, tokenizer_source

    @property
    def dim(self) -> int:
        config = self.model.config
        return int(getattr(config, "hidden_size", None) or config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device=None, dtype=None) -> "TextEncoder":
        self.model.to(device=device, dtype=dtype)
        return self

    def tokenize(self, prompts) -> tuple:
        """(input_ids (N, length), attention_mask (N, length)) of `prompts`, padded to `length`, truncated past it."""
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not one string")
        if not len(prompts):
            empty = torch.zeros(0, self.length, dtype=torch.long)
            return empty, empty
        batch = self.tokenizer(list(prompts), padding="max_length", max_length=self.length, truncation=True,
                               return_tensors="pt")
        return batch["input_ids"], batch.get("attention_mask")

    @torch.no_grad()
    def encode(self, prompts) -> torch.Tensor:
        """The last hidden state of each prompt, (N, length, dim) float32."""
        ids, mask = self.tokenize(prompts)
        if not len(ids):
            return torch.zeros(0, self.length, self.dim)
        kwargs = {"attention_mask": mask.to(self.device)} if self.attention_mask and mask is not None else {}
        hidden = self.model(input_ids=ids.to(self.device), **kwargs).last_hidden_state
        return hidden.float()

    def null(self) -> torch.Tensor:
        """The empty caption's embedding (length, dim): the unconditional input caption dropout trains."""
        return self.encode([""])[0]

    def conditioning(self, prompts):
        """`prompts` as the condition of a text model: TextTokens of their embeddings, with the empty caption's as
        the null (what guidance contrasts with)."""
        from ..conditioning import TextTokens

        return TextTokens(self.encode(prompts), self.null())

    def to_dict(self) -> dict:
        """What a checkpoint or a latents folder records to rebuild this encoder (`from_dict`)."""
        return {"name": self.name, "class": type(self.model).__name__, "length": self.length, "dim": self.dim,
                "attention_mask": self.attention_mask, "tokenizer": self.tokenizer_source}

    @classmethod
    def from_dict(cls, record: dict, device=None, dtype=None) -> "TextEncoder":
        """The encoder `to_dict` described; an error if what loads under its name is not the same tower."""
        encoder = load_text_encoder(record["name"], device=device, dtype=dtype, length=record.get("length"))
        if encoder.dim != record.get("dim", encoder.dim) or type(encoder.model).__name__ != record.get(
                "class", type(encoder.model).__name__):
            raise ValueError(f"text encoder {record['name']!r} is now a {type(encoder.model).__name__} of width "
                             f"{encoder.dim}; it was recorded as a {record.get('class')} of width {record.get('dim')}")
        return encoder

    def __repr__(self):
        return (f"TextEncoder({self.name!r}, {type(self.model).__name__}, length={self.length}, dim={self.dim}, "
                f"tokenizer={self.tokenizer_source})")


def load_text_encoder(name_or_path=DEFAULT_TEXT_ENCODER, device=None, dtype=None, length: int | None = None,
                      cache_dir=None) -> TextEncoder:
    """A frozen TextEncoder from a Hub id, a folder written by save_pretrained, or a dico alias ("dico:digits-clip",
    built on first use).

    The model class follows the folder's config (AutoConfig): CLIP (a full CLIP checkpoint gives its text tower),
    T5 / mT5 / UMT5 (the encoder alone), else AutoModel. The tokenizer is the folder's own when it has tokenizer
    files; a CLIP without them gets CLIPTokenizer over open-clip's bundled vocabulary. `length`: tokens per prompt
    (default: the model's context, 77 for CLIP; 77 for encoders with relative positions such as T5).
    """
    transformers = require("transformers", "text", PART)
    from .tiny import TEXT_ENCODER_ALIASES

    name = resolve_text_encoder(name_or_path)
    source = TEXT_ENCODER_ALIASES[name]() if name in TEXT_ENCODER_ALIASES else name
    local = Path(source).is_dir()
    if local and not (Path(source) / "config.json").is_file():
        raise ValueError(f"{source} is not a text encoder folder (no config.json; write one with save_pretrained)")
    options = {} if local else {"cache_dir": cache_dir}
    dtype = torch.float32 if dtype is None else dtype  # not the checkpoint's own ("auto"): a known precision
    try:
        config = transformers.AutoConfig.from_pretrained(source, **options)
    except (OSError, ValueError) as err:
        if local:
            raise ValueError(f"{source}: unreadable text encoder config ({err})") from err
        raise _hub_error(name, "config", err) from err
    cls = _text_model_class(config, transformers) or transformers.AutoModel
    if cls is transformers.AutoModel and not getattr(config, "vocab_size", None):
        raise ValueError(f"{name} holds a {config.model_type} model, which reads no text (its config has no "
                         "vocabulary); pass a text encoder")
    # The load report would list every weight of the parts not loaded (CLIP's vision tower, T5's decoder); what
    # matters, a text weight missing from the file, is checked below instead.
    try:
        with quiet_transformers():
            model, info = cls.from_pretrained(source, dtype=dtype, output_loading_info=True, **options)
    except OSError as err:
        if local:
            raise ValueError(f"{source} holds no {config.model_type} weights transformers can read ({err})") from err
        raise _hub_error(name, "weights", err) from err
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # transformers would leave them at random initial values
        raise ValueError(f"{source}: {len(missing)} weights of the {type(model).__name__} are not in the file "
                         f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); not a text encoder "
                         "checkpoint of this kind")
    if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
        model = model.get_encoder()
    is_clip = isinstance(model, transformers.CLIPTextModel)
    tokenizer, tokenizer_source = _load_tokenizer(source, name, local, is_clip, options, transformers)
    if is_clip and tokenizer_source == "open_clip-bpe" and model.config.vocab_size < len(tokenizer):
        raise ValueError(f"{name}: a CLIP text model with {model.config.vocab_size} token embeddings and no "
                         f"tokenizer files; CLIP's BPE vocabulary has {len(tokenizer)} tokens")
    if length is None:
        length = getattr(model.config, "max_position_embeddings", None) if is_clip else None
        length = length or DEFAULT_LENGTH
    if is_clip and length > model.config.max_position_embeddings:
        raise ValueError(f"{name} reads at most {model.config.max_position_embeddings} tokens, asked for {length}")
    encoder = TextEncoder(model, tokenizer, name, length, attention_mask=not is_clip,
                          tokenizer_source=tokenizer_source)
    return encoder.to(device=device)


def _load_tokenizer(source: str, name: str, local: bool, is_clip: bool, options: dict, transformers) -> tuple:
    """(tokenizer, where it came from: "transformers" or "open_clip-bpe")."""
    if local and not _has_tokenizer_files(Path(source)):
        if is_clip:
            return clip_bpe_tokenizer(), "open_clip-bpe"
        raise ValueError(f"{source} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the tokenizer "
                         "beside the weights (tokenizer.save_pretrained)")
    try:
        return transformers.AutoTokenizer.from_pretrained(source, **options), "transformers"
    except (OSError, ValueError) as err:
        if is_clip:  # a Hub CLIP whose tokenizer files are not cached: the bundled vocabulary gives the same ids
            return clip_bpe_tokenizer(), "open_clip-bpe"
        if local:
            raise ValueError(f"{source}: its tokenizer files cannot be read ({err})") from err
        raise _hub_error(name, "tokenizer", err) from err
