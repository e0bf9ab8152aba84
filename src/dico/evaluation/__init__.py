"""Evaluation as in the paper: ADM's FID, sFID, Inception Score, precision and recall, in PyTorch.

`evaluate(reference, samples)` gives the numbers of OpenAI's guided-diffusion evaluator (Inception-v3 of the
2015-12-05 TensorFlow graph, via torch-fidelity's port); `features="digits"` swaps in an offline digits classifier for
the small-data demo (Digits-FID, not comparable with ImageNet FID). Text-to-image samples add torchmetrics' CLIP
score against their prompts (`clip_model=`, a local CLIP).
"""

from .clip import ClipScorer, clip_score, load_clip
from .digits import DigitsClassifier, DigitsFeatures, digits_images, digits_split, load_digits_classifier
from .evaluate import FEATURE_KINDS, EvaluationResult, build_extractor, evaluate
from .features import FeatureSet, cached_features, extract_features
from .images import ImageSource, iter_image_batches, open_image_source, read_prompts
from .inception import INCEPTION_WEIGHTS_FILENAME, INCEPTION_WEIGHTS_URL, InceptionFeatures
from .metrics import (GaussianStatistics, class_accuracy, frechet_distance, gaussian_statistics, inception_score,
                      manifold_radii, precision_recall)

__all__ = sorted(["DigitsClassifier", "DigitsFeatures", "digits_images", "digits_split", "load_digits_classifier",
                  "FEATURE_KINDS", "EvaluationResult", "build_extractor", "evaluate", "FeatureSet", "cached_features",
                  "extract_features", "ImageSource", "iter_image_batches", "open_image_source",
                  "INCEPTION_WEIGHTS_FILENAME", "INCEPTION_WEIGHTS_URL", "InceptionFeatures", "GaussianStatistics",
                  "class_accuracy", "frechet_distance", "gaussian_statistics", "inception_score", "manifold_radii",
                  "precision_recall", "ClipScorer", "clip_score", "load_clip", "read_prompts"])
