"""`evaluate(reference, samples)`: FID, sFID, Inception Score, precision and recall as ADM's evaluator reports them.

With `features="digits"` the same pipeline runs on the offline digits classifier instead (Digits-FID, precision,
recall and the class accuracy of labelled samples). Text-to-image samples that carry their prompts also get a CLIP
score (`clip_model`), and a reference folder of photographs of any size is read centre-cropped (`reference_size`, 256
for COCO val as REPA evaluates).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .clip import ClipScorer, clip_score
from .digits import DigitsFeatures
from .features import FeatureSet, cached_features
from .images import (ImageSource, carries_prompts, open_image_source, read_labels, read_prompts,
                     read_reference_statistics)
from .inception import InceptionFeatures
from .metrics import (
    IS_SPLIT_SIZE,
    PR_NEIGHBORHOOD,
    GaussianStatistics,
    class_accuracy,
    frechet_distance,
    inception_score,
    precision_recall,
)

FEATURE_KINDS = ("inception", "digits")
# Which precomputed reference statistics stand in for which feature layer (ADM's reference batch keys).
PRECOMPUTED_KEYS = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}


@dataclass
class EvaluationResult:
    """What `dico evaluate` prints; None where a metric does not apply or lacks its inputs."""

    features: str  # "inception" or "digits"
    extractor: str  # network and weights identity
    num_samples: int
    num_reference: int  # reference images (0 when the reference holds only statistics)
    fid: float  # FID (Inception) or Digits-FID (digits)
    sfid: float | None = None
    inception_score: float | None = None
    precision: float | None = None
    recall: float | None = None
    class_accuracy: float | None = None
    reference_statistics: str = "computed"  # "precomputed" when taken from the reference .npz
    clip_score: float | None = None  # torchmetrics' CLIP score of the samples against their prompts
    clip_model: str | None = None  # the CLIP model it was computed with
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out

    def format(self) -> str:
        fid_name = "FID" if self.features == "inception" else "Digits-FID"
        rows = [
            ("Samples", str(self.num_samples)),
            ("Reference", f"{self.num_reference} images, {self.reference_statistics} statistics"),
            ("Features", self.extractor),
            (fid_name, self.fid),
            ("sFID", self.sfid),
            ("Inception Score", self.inception_score),
            ("Precision", self.precision),
            ("Recall", self.recall),
            ("Class accuracy", self.class_accuracy),
            ("CLIP score", self.clip_score),
        ]
        not_applicable = ("Class accuracy",) if self.features == "inception" else ("sFID", "Inception Score")
        if self.clip_model is None:
            not_applicable += ("CLIP score",)
        lines = []
        for name, value in rows:
            if name in not_applicable:
                continue
            if value is None:
                value = "unavailable"
            elif isinstance(value, float):
                value = f"{value:.4f}"
            lines.append(f"{name:<16} {value}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_batch_size(device) -> int:
    return 200 if torch.device(device).type == "cuda" else 32


def build_extractor(features: str = "inception", inception_weights=None, device="cpu"):
    """The feature network: ADM's Inception-v3 (torch-fidelity port) or the offline digits classifier."""
    if features == "inception":
        return InceptionFeatures(inception_weights, device=device)
    if features == "digits":
        return DigitsFeatures(device=device)
    raise ValueError(f"unknown features {features!r}; choose one of {', '.join(FEATURE_KINDS)}")


def _precomputed_statistics(source: ImageSource, layers: dict) -> dict[str, GaussianStatistics]:
    stored = read_reference_statistics(source)
    out = {}
    for layer, (mu_key, sigma_key) in PRECOMPUTED_KEYS.items():
        present = [key for key in (mu_key, sigma_key) if key in stored]
        if not present:
            continue
        if len(present) == 1:
            missing = sigma_key if mu_key in present else mu_key
            raise ValueError(f"{source.path} has '{present[0]}' but not '{missing}'; both or neither are needed")
        mu, sigma = stored[mu_key], stored[sigma_key]
        dim = layers[layer]
        if mu.shape != (dim,) or sigma.shape != (dim, dim):
            raise ValueError(
                f"{source.path}: '{mu_key}' {mu.shape} / '{sigma_key}' {sigma.shape} do not fit ADM's Inception "
                f"{layer} features ({dim},) / ({dim}, {dim})"
            )
        out[layer] = GaussianStatistics(mu, sigma)
    return out


def _sample_labels(source: ImageSource, num_classes: int):
    labels = read_labels(source)
    if labels is not None and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{source.path}: labels (arr_1) must lie in [0, {num_classes - 1}]")
    return labels


def evaluate(
    reference,
    samples,
    *,
    features: str = "inception",
    inception_weights=None,
    batch_size: int | None = None,
    device=None,
    use_cache: bool = True,
    progress: bool = True,
    threads=None,
    reference_size: int | None = None,
    reference_crop: str = "uvit",
    clip_model=None,
) -> EvaluationResult:
    """Compare `samples` with `reference` (ADM .npz files or image folders).

    features: "inception" (ADM's metrics: FID, sFID, IS, precision, recall) or "digits" (Digits-FID, precision, recall,
        class accuracy of samples against their `arr_1` labels). Precomputed `mu`/`sigma`/`mu_s`/`sigma_s` in an
        Inception reference .npz replace the statistics of its images, as in ADM.
    inception_weights: torch-fidelity's weights-inception-2015-12-05-6726825d.pth; None downloads it once.
    batch_size, device: of the feature network (default: 200 on CUDA, 32 on CPU; CUDA when available).
    use_cache: read/write features next to each input, keyed by content hash and network identity.
    threads: torch's CPU threads while extracting features (dico.threads.ThreadPolicy: None leaves them alone, N or
        "auto").
    reference_size: read a reference folder's images resized and centre-cropped to this many pixels, so that
        photographs of any size (COCO's val2014) give reference statistics at 256 px as REPA's text-to-image
        evaluation uses; None: a folder's images must share one size.
    reference_crop: how: "uvit" (central square, LANCZOS: U-ViT's COCO preparation, behind the COCO statistics REPA
        and DiCo report FID against) or "adm" (ADM's ImageNet center_crop_arr).
    clip_model: also give torchmetrics' CLIP score of the samples against their prompts (an .npz's `prompts`, a
        folder's metadata.jsonl), with this CLIP model: a local folder (save_pretrained) or a Hub name already in
        the local cache.
    """
    if features not in FEATURE_KINDS:
        raise ValueError(f"unknown features {features!r}; choose one of {', '.join(FEATURE_KINDS)}")
    device = device or default_device()
    batch_size = batch_size or default_batch_size(device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    # Inputs are checked before the network is built: a wrong file fails in a second, not after an hour of features.
    sample_source = open_image_source(samples)
    reference_source = open_image_source(reference, require_images=False, crop_size=reference_size,
                                         crop=reference_crop)
    for source in (sample_source, reference_source):
        if source.count == 1:
            raise ValueError(f"{source.path} holds a single image; a covariance needs at least 2")
    precomputed = {}
    if features == "inception":
        precomputed = _precomputed_statistics(reference_source, InceptionFeatures.layers)
        # mu/sigma alone (as U-ViT's fid_stats_mscoco256_val.npz, REPA's COCO reference) give FID without sFID.
        if not reference_source.has_images and "pool" not in precomputed:
            raise ValueError(f"{reference_source.path} holds neither images nor mu and sigma (FID's statistics)")
    elif not reference_source.has_images:
        raise ValueError(f"{reference_source.path} holds only Inception statistics; --features {features} needs images")
    labels = _sample_labels(sample_source, DigitsFeatures.label_classes) if features == "digits" else None
    prompts, scorer = None, None
    if clip_model is not None:
        prompts = read_prompts(sample_source)
        if prompts is None:
            raise ValueError(f"{sample_source.path} carries no prompts, and CLIP score needs each sample's: an .npz "
                             f"stores them as 'prompts' (as `dico sample --prompt` writes), a folder in "
                             f"metadata.jsonl (file_name, text)")
        scorer = ClipScorer(clip_model, device)  # loaded now: a missing model fails before any feature
    extractor = build_extractor(features, inception_weights, device)

    sample_set = cached_features(sample_source, extractor, batch_size, progress, use_cache, threads)
    reference_set: FeatureSet | None = None
    if reference_source.has_images:
        reference_set = cached_features(reference_source, extractor, batch_size, progress, use_cache, threads)
    reference_stats = dict(reference_set.statistics) if reference_set else {}
    reference_stats.update(precomputed)

    distances = {
        layer: frechet_distance(sample_set.statistics[layer], reference_stats[layer])
        for layer in extractor.statistics_layers
        if layer in reference_stats
    }
    result = EvaluationResult(
        features=features,
        extractor=extractor.identity,
        num_samples=sample_source.count,
        num_reference=reference_source.count,
        fid=distances[extractor.statistics_layers[0]],
        reference_statistics="precomputed" if precomputed else "computed",
    )
    if scorer is not None:
        result.clip_score = clip_score(sample_source, prompts, scorer, batch_size=batch_size, device=device,
                                       progress=progress, threads=threads)
        result.clip_model = str(clip_model)
    notes = []
    if features == "inception":
        result.sfid = distances.get("spatial")
        if result.sfid is None:
            notes.append("sFID unavailable: the reference holds mu/sigma but neither images nor mu_s/sigma_s")
        result.inception_score = inception_score(sample_set.features["logits"], IS_SPLIT_SIZE)
    pr_layer = "pool" if features == "inception" else "features"
    if reference_set is None:
        notes.append("precision/recall unavailable: the reference holds statistics but no images")
    elif min(reference_set.count, sample_set.count) <= PR_NEIGHBORHOOD:
        notes.append(f"precision/recall unavailable: each set needs more than {PR_NEIGHBORHOOD} images")
    else:
        result.precision, result.recall = precision_recall(
            reference_set.features[pr_layer], sample_set.features[pr_layer], PR_NEIGHBORHOOD, device
        )
    if features == "digits":
        if labels is None:
            notes.append("class accuracy unavailable: the samples carry no labels (arr_1)")
        else:
            result.class_accuracy = class_accuracy(sample_set.features["logits"], labels)
        notes.append("Digits-FID uses a digits classifier's features; it is not comparable with ImageNet FID")
    if features == "inception" and carries_prompts(sample_source):
        if sample_source.count < 30000:
            notes.append(f"{sample_source.count} samples: COCO FIDs are reported for one sample per val2014 image "
                         "(40504) or for 30000 (FID is biased upward for fewer)")
    elif features == "inception" and sample_source.count < 50000:
        notes.append(f"{sample_source.count} samples: the paper's numbers use 50000 (FID is biased upward for fewer)")
    if not all(math.isfinite(v) for v in distances.values()):
        notes.append("a Fréchet distance is not finite: check the inputs for constant or degenerate images")
    result.notes = tuple(notes)
    return result
