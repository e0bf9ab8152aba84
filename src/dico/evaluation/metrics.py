"""The metrics, as ADM's evaluation suite (guided-diffusion/evaluations) defines them, on feature arrays.

Statistics and scores are computed in float64. Pairwise distances for precision/recall are float32 matrix products
on the chosen device, batched so that memory stays bounded for 50k samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IS_SPLIT_SIZE = 5000  # ADM scores the Inception Score on consecutive splits of 5000 samples
PR_NEIGHBORHOOD = 3  # ADM's ManifoldEstimator: radius = distance to the 3rd nearest neighbour
_STAT_CHUNK = 8192


@dataclass(frozen=True)
class GaussianStatistics:
    """Mean and covariance of a feature set, the two numbers the Fréchet distance compares."""

    mu: np.ndarray
    sigma: np.ndarray

    def __post_init__(self):
        if self.mu.ndim != 1 or self.sigma.shape != (self.mu.shape[0],) * 2:
            raise ValueError(f"statistics need mu (D,) and sigma (D, D); got {self.mu.shape} and {self.sigma.shape}")


class RunningStatistics:
    """Mean and unbiased covariance (as np.cov) of feature batches seen one at a time, in float64.

    Sums are taken around the first batch's mean, so the one-pass formula loses nothing to cancellation even when
    features sit far from zero; only a D x D matrix is kept, never the features themselves.
    """

    def __init__(self, dim: int):
        self.count = 0
        self.shift = None
        self.total = np.zeros(dim, dtype=np.float64)
        self.gram = np.zeros((dim, dim), dtype=np.float64)

    def update(self, features: np.ndarray) -> None:
        x = np.asarray(features, dtype=np.float64)
        if self.shift is None:
            self.shift = x.mean(axis=0)
        x = x - self.shift
        self.total += x.sum(axis=0)
        self.gram += x.T @ x
        self.count += len(x)

    def result(self) -> GaussianStatistics:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.count}")
        mean = self.total / self.count
        sigma = (self.gram - self.count * np.outer(mean, mean)) / (self.count - 1)
        return GaussianStatistics(self.shift + mean, (sigma + sigma.T) / 2)


def gaussian_statistics(features: np.ndarray) -> GaussianStatistics:
    """Mean and unbiased covariance (as np.cov) in float64, accumulated in chunks to bound memory."""
    running = RunningStatistics(features.shape[1])
    for start in range(0, len(features), _STAT_CHUNK):
        running.update(features[start : start + _STAT_CHUNK])
    return running.result()


def frechet_distance(a: GaussianStatistics, b: GaussianStatistics) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    tr((S_a S_b)^(1/2)) is taken as the sum of square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), a symmetric
    matrix with the same spectrum as S_a S_b: the same number ADM's scipy.linalg.sqrtm gives for well-conditioned
    covariances, without its complex round-off or its failure on the singular covariances of small sets. With
    S_a = V diag(w) V^T, that matrix is computed on the range of S_a only (eigenvalues w numerically above zero), which
    is exact and makes rank-deficient covariances (fewer samples than dimensions) cheap.
    """
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"cannot compare statistics of {a.mu.shape[0]}-d and {b.mu.shape[0]}-d features")
    diff = a.mu - b.mu
    w, v = np.linalg.eigh(a.sigma)
    keep = w > max(w[-1], 0.0) * len(w) * np.finfo(np.float64).eps
    root = v[:, keep] * np.sqrt(w[keep])  # S_a^(1/2) = root @ v[:, keep].T
    middle = root.T @ b.sigma @ root
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr_covmean)


def inception_score(logits: np.ndarray, split_size: int = IS_SPLIT_SIZE) -> float:
    """Mean over consecutive splits of exp(E_x KL(p(y|x) || p(y))), softmax taken over all logits (ADM)."""
    if len(logits) == 0:
        raise ValueError("the Inception Score needs at least one sample")
    logits = torch.as_tensor(logits, dtype=torch.float64)
    log_p = torch.log_softmax(logits, dim=1)
    scores = []
    for start in range(0, len(logits), split_size):
        part = log_p[start : start + split_size]
        log_marginal = torch.logsumexp(part, dim=0) - np.log(len(part))
        kl = (part.exp() * (part - log_marginal)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores))


def _squared_distances(rows: torch.Tensor, columns: torch.Tensor, column_norms: torch.Tensor) -> torch.Tensor:
    row_norms = rows.square().sum(dim=1, keepdim=True)
    return (row_norms - 2 * rows @ columns.T + column_norms[None, :]).clamp_min_(0)


def manifold_radii(
    features: torch.Tensor, k: int = PR_NEIGHBORHOOD, row_batch_size: int = 2048
) -> torch.Tensor:
    """Squared distance from each feature vector to its k-th nearest neighbour in the same set (itself excluded)."""
    if len(features) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} feature vectors, got {len(features)}")
    norms = features.square().sum(dim=1)
    radii = []
    for start in range(0, len(features), row_batch_size):
        distances = _squared_distances(features[start : start + row_batch_size], features, norms)
        # The k+1 smallest include the point itself at distance 0, as ADM's partition does.
        radii.append(torch.topk(distances, k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def precision_recall(
    reference: np.ndarray,
    samples: np.ndarray,
    k: int = PR_NEIGHBORHOOD,
    device="cpu",
    row_batch_size: int = 2048,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) as in ADM's ManifoldEstimator.

    Precision: share of samples inside some reference ball; recall: share of references inside some sample ball; each
    ball centred on a feature vector with radius its k-th nearest-neighbour distance within its own set.
    """
    if reference.shape[1] != samples.shape[1]:
        raise ValueError(f"reference features are {reference.shape[1]}-d, sample features {samples.shape[1]}-d")
    ref = torch.as_tensor(np.ascontiguousarray(reference), dtype=torch.float32, device=device)
    smp = torch.as_tensor(np.ascontiguousarray(samples), dtype=torch.float32, device=device)
    ref_radii = manifold_radii(ref, k, row_batch_size)
    smp_radii = manifold_radii(smp, k, row_batch_size)
    ref_norms = ref.square().sum(dim=1)
    sample_in_reference = torch.zeros(len(smp), dtype=torch.bool, device=device)
    reference_in_samples = torch.zeros(len(ref), dtype=torch.bool, device=device)
    for start in range(0, len(smp), row_batch_size):
        distances = _squared_distances(smp[start : start + row_batch_size], ref, ref_norms)
        sample_in_reference[start : start + row_batch_size] = (distances <= ref_radii[None, :]).any(dim=1)
        reference_in_samples |= (distances <= smp_radii[start : start + row_batch_size, None]).any(dim=0)
    return float(sample_in_reference.double().mean()), float(reference_in_samples.double().mean())


def class_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of samples a classifier assigns to the class they were generated for."""
    if len(logits) != len(labels):
        raise ValueError(f"{len(logits)} samples but {len(labels)} labels")
    return float(np.mean(np.argmax(logits, axis=1) == labels))
