"""The flow-matching objective of SiT (arXiv 2401.08740): a path between noise and data, what the model predicts,
how the loss is weighted, and the time interval trained and sampled.

Time runs from t = 0 (noise x0) to t = 1 (data x1); the model is called with continuous t in [0, 1].
Numbers match SiT's `transport/` package (see tests/test_transport.py); the differences are in what SiT leaves to
global state, does not check, or gets wrong at the edges:
- t and x0 are drawn from generators keyed by (seed, purpose, step, position) when `keys` are given;
- t can also be drawn logit-normal (SD3, LightningDiT) besides SiT's uniform;
- a model with learned sigma (2C output channels) is read through its first C channels, here rather than in the model;
- each eps defaults on its own (SiT ties sample_eps's default to whether train_eps was given, see create_transport);
- a loss weight with velocity prediction is refused rather than ignored;
- a VP noise model is never evaluated at t >= 1, where sigma = 0 (SiT's reverse ODE, likelihood and overshooting
  adaptive steps do, and return NaN); an SDE with SBDM diffusion from t = 0 (infinite there) is refused;
- an SDE step calls the model once, not twice; the likelihood's Hutchinson probe is fixed for the whole solve.
"""

import math

import torch

from ..randomness import PURPOSES, keyed_randn, keyed_uniform
from ..tensors import mean_flat
from .paths import PATHS, VPPath, expand_like

PREDICTIONS = ("velocity", "noise", "score")
LOSS_WEIGHTS = (None, "velocity", "likelihood")
TIME_SAMPLINGS = ("uniform", "logit-normal")

# Ids of the draws that dico.randomness.PURPOSES does not already name (kept apart from its ids 1..7). Training
# reuses PURPOSES["timestep"] for t and PURPOSES["noise"] for x0: the same meaning as in DDPM training.
TRANSPORT_PURPOSES = {"likelihood_probe": 8}


def model_prediction(model, x, t, **model_kwargs) -> torch.Tensor:
    """The model's prediction for x: all of its output, or the first x.shape[1] channels of a model with learned
    sigma (DiT/DiCo with learn_sigma=True output 2C channels; flow matching has no use for the variance half)."""
    out = model(x, t, **model_kwargs)
    if out.shape[1] != x.shape[1]:
        if out.shape[1] != 2 * x.shape[1]:
            raise ValueError(f"model output has {out.shape[1]} channels for {x.shape[1]} input channels; "
                             f"expected {x.shape[1]} or {2 * x.shape[1]} (learned sigma)")
        out = out[:, : x.shape[1]]
    if out.shape != x.shape:
        raise ValueError(f"model output shape {tuple(out.shape)} does not match its input {tuple(x.shape)}")
    return out


class Transport:
    """A flow-matching objective: path, prediction type, loss weight and the eps margins of the time interval.

    Build it with `create_transport`, which applies SiT's defaults for the eps margins.
    """

    def __init__(self, *, path: str = "Linear", prediction: str = "velocity", loss_weight: str | None = None,
                 train_eps: float = 0.0, sample_eps: float = 0.0, time_sampling: str = "uniform",
                 logit_mean: float = 0.0, logit_std: float = 1.0):
        if path not in PATHS:
            raise ValueError(f"unknown path {path!r}; valid: {', '.join(PATHS)}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")
        if loss_weight not in LOSS_WEIGHTS:
            raise ValueError(f"unknown loss weight {loss_weight!r}; valid: None, 'velocity', 'likelihood'")
        if loss_weight is not None and prediction == "velocity":
            raise ValueError("a loss weight applies to noise or score prediction only (SiT ignores it for velocity)")
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time sampling {time_sampling!r}; valid: {', '.join(TIME_SAMPLINGS)}")
        if logit_std <= 0:
            raise ValueError(f"logit_std must be positive, got {logit_std}")
        self.path_type, self.prediction, self.loss_weight = path, prediction, loss_weight
        self.path = PATHS[path]()
        self.train_eps, self.sample_eps = float(train_eps), float(sample_eps)
        self.time_sampling, self.logit_mean, self.logit_std = time_sampling, float(logit_mean), float(logit_std)

    def __repr__(self):
        return (f"Transport(path={self.path_type!r}, prediction={self.prediction!r}, loss_weight={self.loss_weight!r},"
                f" train_eps={self.train_eps}, sample_eps={self.sample_eps}, time_sampling={self.time_sampling!r})")

    # ----------------------------------------------------------------------------------------------------- time
    def interval(self, *, sampling: bool = False, sde: bool = False, diffusion_form: str = "SBDM",
                 last_step_size: float = 0.0, reverse: bool = False) -> tuple[float, float]:
        """(t0, t1): the times training draws from or a sampler integrates over, SiT's rules.

        The VP path stops eps short of the data end (its coefficients degenerate at t = 1). Linear and GVP are
        integrated on all of [0, 1] by a velocity ODE; a noise or score model, or an SDE, starts eps after the noise
        end (where score <-> velocity is singular) and stops eps (or the SDE's last step) before the data end.
        """
        eps = self.sample_eps if sampling else self.train_eps
        t0, t1 = 0.0, 1.0
        if isinstance(self.path, VPPath):
            t1 = 1 - eps if (not sde or last_step_size == 0) else 1 - last_step_size
        elif self.prediction != "velocity" or sde:
            t0 = eps if (diffusion_form == "SBDM" and sde) or self.prediction != "velocity" else 0.0
            t1 = 1 - eps if (not sde or last_step_size == 0) else 1 - last_step_size
        if reverse:
            t0, t1 = (t1, t0) if self.singular_at_data_end else (1 - t0, 1 - t1)
        return t0, t1

    @property
    def singular_at_data_end(self) -> bool:
        """Whether the model's prediction cannot be read at t = 1: the VP path's sigma is 0 there and a noise
        prediction is divided by it. SiT mirrors the interval for data -> noise integration, which starts the VP
        path exactly at t = 1 (NaN for noise prediction); such a transport runs its forward interval backwards."""
        return isinstance(self.path, VPPath) and self.prediction == "noise"

    def draw(self, x1: torch.Tensor, keys=None, generator: torch.Generator | None = None):
        """Training times t (B,) and noise x0 (like x1) for a batch of data x1.

        keys: one (seed, step, position) per sample: t and x0 then come from generators keyed by
            (seed, PURPOSES["timestep"|"noise"], step, position), so a sample's draw does not depend on the batch it
            is in. Without keys they come from `generator` (or torch's global generator), like SiT.
        """
        t0, t1 = self.interval()
        n = x1.shape[0]
        logit_normal = self.time_sampling == "logit-normal"
        if keys is not None:
            if len(keys) != n:
                raise ValueError(f"{len(keys)} keys for a batch of {n}")
            time_keys = [(k[0], PURPOSES["timestep"], *k[1:]) for k in keys]
            u = keyed_randn(time_keys, ()) if logit_normal else keyed_uniform(time_keys)
            x0 = keyed_randn([(k[0], PURPOSES["noise"], *k[1:]) for k in keys], x1.shape[1:], x1.device, x1.dtype)
        else:
            u = torch.randn(n, generator=generator) if logit_normal else torch.rand(n, generator=generator)
            x0 = torch.randn(x1.shape, generator=generator).to(x1)
        if logit_normal:  # t = sigmoid(N(mean, std)), here with t = 1 at the data end
            u = torch.sigmoid(u * self.logit_std + self.logit_mean)
        t = u * (t1 - t0) + t0
        return t.to(x1), x0

    # ----------------------------------------------------------------------------------------------------- loss
    def training_losses(self, model, x1: torch.Tensor, model_kwargs: dict | None = None, t: torch.Tensor | None = None,
                        x0: torch.Tensor | None = None, keys=None, generator: torch.Generator | None = None) -> dict:
        """Per-sample loss (B,) and the model's prediction ("pred") on x_t between noise x0 and data x1.

        t and x0 are drawn (see `draw`) when not given; either may be given alone.
        """
        model_kwargs = model_kwargs or {}
        if t is None or x0 is None:
            drawn_t, drawn_x0 = self.draw(x1, keys, generator)
            t = drawn_t if t is None else t
            x0 = drawn_x0 if x0 is None else x0
        xt = self.path.interpolate(t, x0, x1)
        pred = model_prediction(model, xt, t, **model_kwargs)
        if self.prediction == "velocity":
            loss = mean_flat((pred - self.path.target_velocity(t, x0, x1)) ** 2)
        else:
            _, g = self.path.drift_terms(xt, t)
            sigma_t, _ = self.path.sigma(expand_like(t, xt))
            if self.loss_weight == "velocity":
                weight = (g / sigma_t) ** 2
            elif self.loss_weight == "likelihood":
                weight = g / sigma_t**2
            else:
                weight = 1
            # Both targets say the same: the noise model predicts x0, the score model -x0 / sigma_t.
            residual = pred - x0 if self.prediction == "noise" else pred * sigma_t + x0
            loss = mean_flat(weight * residual**2)
        return {"loss": loss, "pred": pred}

    # ---------------------------------------------------------------------------------------------- sampling
    def velocity(self, x, t, model, **model_kwargs) -> torch.Tensor:
        """The probability-flow velocity dx/dt at (x, t) from the model, whatever it predicts."""
        return self.velocity_and_score(x, t, model, **model_kwargs)[0]

    def score_from_prediction(self, pred, x, t) -> torch.Tensor:
        if self.prediction == "score":
            return pred
        if self.prediction == "noise":
            return pred / -self.path.sigma(expand_like(t, x))[0]
        return self.path.score_from_velocity(pred, x, t)

    def velocity_and_score(self, x, t, model, **model_kwargs):
        """Both fields from ONE model call (an SDE step needs both; SiT calls the model twice)."""
        if self.prediction == "velocity":
            velocity = model_prediction(model, x, t, **model_kwargs)
            return velocity, self.path.score_from_velocity(velocity, x, t)
        # The drift terms before the model call, as SiT: autograd then sums the divergence's terms in SiT's order,
        # and likelihoods from adaptive solvers agree to the last bits.
        f, g = self.path.drift_terms(x, t)
        score = self.score_from_prediction(model_prediction(model, x, t, **model_kwargs), x, t)
        return f + g * score, score

    @staticmethod
    def prior_logp(z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) per sample."""
        return -z[0].numel() / 2.0 * math.log(2 * math.pi) - z.flatten(1).pow(2).sum(1) / 2.0


def create_transport(path_type: str = "Linear", prediction: str = "velocity", loss_weight: str | None = None,
                     train_eps: float | None = None, sample_eps: float | None = None, time_sampling: str = "uniform",
                     logit_mean: float = 0.0, logit_std: float = 1.0) -> Transport:
    """A Transport with SiT's defaults (`transport.create_transport` in SiT, same arguments first).

    eps margins: velocity on the Linear or GVP path is stable on all of [0, 1], so both are 0 there (SiT overrides
    given values too). Otherwise train_eps defaults to 1e-5 (VP) or 1e-3 (Linear/GVP with noise or score), and
    sample_eps to 1e-3. SiT ties sample_eps to train_eps being None (a sample_eps given alone is replaced by 1e-3,
    and one left out when train_eps is given becomes None); here each defaults on its own, the same numbers whenever
    both are given or both left out.

    time_sampling: "uniform" (SiT) or "logit-normal": t = sigmoid(N(logit_mean, logit_std)) mapped into the
    training interval. With t = 1 at the data end, a positive logit_mean favours the data end; SD3's m (whose time
    runs the other way) is -logit_mean here. Both papers' default is mean 0, std 1.
    """
    if path_type not in PATHS:
        raise ValueError(f"unknown path {path_type!r}; valid: {', '.join(PATHS)}")
    if prediction == "velocity" and path_type in ("Linear", "GVP"):
        train_eps, sample_eps = 0.0, 0.0
    else:
        train_eps = (1e-5 if path_type == "VP" else 1e-3) if train_eps is None else train_eps
        sample_eps = 1e-3 if sample_eps is None else sample_eps
    return Transport(path=path_type, prediction=prediction, loss_weight=loss_weight, train_eps=train_eps,
                     sample_eps=sample_eps, time_sampling=time_sampling, logit_mean=logit_mean, logit_std=logit_std)
