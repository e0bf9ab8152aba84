"""Batched feature extraction with a progress bar, cached next to the input.

The cache file `<input>.<content-hash>.<extractor-identity>.features.npz` holds every feature layer (float32) and the
float64 mean/covariance of the layers that feed a Fréchet distance, so a second evaluation against the same reference
reads a file instead of running the network. Where the input's folder is read-only the cache goes to
`<dico cache dir>/features/` instead.
"""

from __future__ import annotations

import queue
import sys
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
from tqdm.auto import tqdm

from ..cache import atomic_write, cache_dir
from ..threads import ThreadPolicy
from .images import ImageSource, content_hash, iter_image_batches
from .metrics import GaussianStatistics, RunningStatistics


class FeatureExtractor(Protocol):
    kind: str  # "inception" or "digits"
    identity: str  # names the network and its weights; part of the cache key
    layers: dict  # layer name -> feature dimension
    stored_layers: tuple  # layers whose features are kept (precision/recall, scores)
    statistics_layers: tuple  # layers whose mean/covariance are kept (Fréchet distances)

    def __call__(self, images: np.ndarray) -> dict: ...


@dataclass
class FeatureSet:
    """Features of one image set: stored layer -> (N, D) float32, and statistics of the layers that need them."""

    features: dict[str, np.ndarray]
    statistics: dict[str, GaussianStatistics] = field(default_factory=dict)
    from_cache: bool = False
    cache_path: Path | None = None

    @property
    def count(self) -> int:
        return len(next(iter(self.features.values())))


def _prefetch(iterator: Iterator, depth: int = 2) -> Iterator:
    """Decode the next batches on a thread while the network works on this one."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in iterator:
                if not offer(item):
                    return  # the consumer gave up: stop reading
            offer(done)
        except BaseException as err:  # handed to the consumer, raised there
            offer(err)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        producer.join()


def extract_features(
    source: ImageSource, extractor: FeatureExtractor, batch_size: int = 64, progress: bool = True, threads=None
) -> FeatureSet:
    """Run the extractor over all images, batch by batch. Kept in memory: the stored layers' features and running
    statistics; layers needed only for statistics (sFID's 2023-d spatial features) are never gathered. `threads`:
    torch's CPU threads meanwhile (dico.threads.ThreadPolicy: None leaves them alone, N or "auto")."""
    stored = {name: np.empty((source.count, extractor.layers[name]), np.float32) for name in extractor.stored_layers}
    running = {name: RunningStatistics(extractor.layers[name]) for name in extractor.statistics_layers}
    done = 0
    cpu_threads = ThreadPolicy(threads, getattr(extractor, "device", "cpu"))
    with cpu_threads, tqdm(total=source.count, unit="img", desc=f"{extractor.kind} features of {source.path.name}",
                           disable=not progress, file=sys.stderr, leave=False) as bar:  # fmt: skip
        for batch in _prefetch(iter_image_batches(source, batch_size)):
            cpu_threads()
            values = extractor(batch)
            for name in stored:
                stored[name][done : done + len(batch)] = values[name]
            for name in running:
                running[name].update(values[name])
            done += len(batch)
            bar.update(len(batch))
    return FeatureSet(stored, {name: r.result() for name, r in running.items()})


def _cache_candidates(source: ImageSource, extractor: FeatureExtractor, digest: str) -> list[Path]:
    name = f"{source.path.name}.{digest[:16]}.{extractor.identity}.features.npz"
    return [source.path.parent / name, cache_dir() / "features" / name]


def _read_cache(path: Path, extractor: FeatureExtractor, count: int) -> FeatureSet | None:
    try:
        with np.load(path) as data:
            features = {name: data[name] for name in extractor.stored_layers}
            statistics = {
                name: GaussianStatistics(data[f"mu_{name}"], data[f"sigma_{name}"])
                for name in extractor.statistics_layers
            }
    except Exception as err:  # unreadable or from an older layout: recompute rather than trust it
        warnings.warn(f"ignoring unreadable feature cache {path}: {err}", stacklevel=3)
        return None
    if any(f.shape != (count, extractor.layers[n]) for n, f in features.items()):
        return None
    return FeatureSet(features, statistics, from_cache=True, cache_path=path)


def _write_cache(candidates: list[Path], feature_set: FeatureSet) -> Path | None:
    arrays = dict(feature_set.features)
    for name, stats in feature_set.statistics.items():
        arrays[f"mu_{name}"], arrays[f"sigma_{name}"] = stats.mu, stats.sigma
    for path in candidates:
        try:
            return atomic_write(path, lambda partial: np.savez(partial, **arrays), suffix=".npz")
        except OSError:  # e.g. a read-only folder: try the next place
            pass
    return None


def cached_features(
    source: ImageSource,
    extractor: FeatureExtractor,
    batch_size: int = 64,
    progress: bool = True,
    use_cache: bool = True,
    threads=None,
) -> FeatureSet:
    """Features and statistics of `source`, read from the cache when this content met this extractor before."""
    candidates = _cache_candidates(source, extractor, content_hash(source)) if use_cache else []
    for path in candidates:
        if path.is_file() and (hit := _read_cache(path, extractor, source.count)) is not None:
            return hit
    feature_set = extract_features(source, extractor, batch_size, progress, threads)
    if use_cache:
        feature_set.cache_path = _write_cache(candidates, feature_set)
    return feature_set
