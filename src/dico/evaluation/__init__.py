"""Evaluation as in the paper: ADM's FID, sFID, Inception Score, precision and recall, in PyTorch.

`evaluate(reference, samples)` gives the numbers of OpenAI's guided-diffusion evaluator (Inception-v3 of the
2015-12-05 TensorFlow graph, via torch-fidelity's port); `features="digits"` swaps in an offline digits classifier for
the small-data demo (Digits-FID, not comparable with ImageNet FID).
"""

from ..lazy import lazy_exports

SUBMODULE_EXPORTS = {
    "digits": ["DigitsClassifier", "DigitsFeatures", "digits_images", "digits_split", "load_digits_classifier"],
    "evaluate": ["FEATURE_KINDS", "EvaluationResult", "build_extractor", "evaluate"],
    "features": ["FeatureSet", "cached_features", "extract_features"],
    "images": ["ImageSource", "iter_image_batches", "open_image_source"],
    "inception": ["INCEPTION_WEIGHTS_FILENAME", "INCEPTION_WEIGHTS_URL", "InceptionFeatures"],
    "metrics": ["GaussianStatistics", "class_accuracy", "frechet_distance", "gaussian_statistics", "inception_score",
                "manifold_radii", "precision_recall"],
}
EXPORTS = {name: f".{module}" for module, names in SUBMODULE_EXPORTS.items() for name in names}
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
__all__ = sorted(EXPORTS)
