"""Reward-model ensembles (labeling/reward_model.py) on synthetic Bradley-Terry teachers.

Tiny networks, few epochs and one thread, so the file runs in seconds; no database."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from labeling import reward_model as rm

OBS_DIM, ACT_DIM = 3, 2
FAST = rm.TrainConfig(max_epochs=25, batch_size=64, learning_rate=5e-3, patience=5, seed=0)


def _true_reward(obs: np.ndarray, act: np.ndarray) -> np.ndarray:
    # Linear in the observation, nonlinear in the action.
    return obs @ np.array([1.0, -0.5, 0.3]) + 0.5 * np.tanh(2.0 * act[:, 0])


def _segments(rng: np.random.Generator, n_rows: int, n_pairs: int) -> tuple[np.ndarray, ...]:
    length = rng.integers(4, 12, size=(n_pairs, 2))  # variable lengths within a pair
    start = rng.integers(0, n_rows - 12, size=(n_pairs, 2))
    first = np.stack([start[:, 0], start[:, 0] + length[:, 0]], axis=1)
    second = np.stack([start[:, 1], start[:, 1] + length[:, 1]], axis=1)
    return first, second


@pytest.fixture(scope="module")
def task():
    """Steps, segment pairs and soft labels from a Bradley-Terry teacher over true returns."""
    rng = np.random.default_rng(0)
    n_rows = 1500
    obs = rng.normal(size=(n_rows, OBS_DIM))
    act = rng.normal(size=(n_rows, ACT_DIM))
    true = _true_reward(obs, act)
    first, second = _segments(rng, n_rows, 240)
    csum = np.concatenate([[0.0], np.cumsum(true)])
    margin = (csum[first[:, 1]] - csum[first[:, 0]]) - (csum[second[:, 1]] - csum[second[:, 0]])
    label = 1.0 / (1.0 + np.exp(-margin))
    pairs = rm.trajectory_pairs(
        observations=obs, actions=act, first=first, second=second, label=label
    )
    return {"obs": obs, "act": act, "true": true, "pairs": pairs}


@pytest.fixture(scope="module")
def trained(task):
    return rm.train(task["pairs"], hidden_sizes=(16, 16), config=FAST)


def test_learns_the_teachers_preferences_and_the_reward_shape(task, trained):
    assert trained.model.config.members == 3
    assert len(trained.epochs) == 3 and all(1 <= e <= FAST.max_epochs for e in trained.epochs)
    assert trained.seconds > 0
    metrics = trained.metrics
    assert metrics is not None and metrics.n_pairs == 48
    assert metrics.accuracy > 0.85
    assert metrics.log_loss < 0.6
    assert 0.0 <= metrics.ece < 0.2
    assert 0.0 < metrics.mean_entropy < math.log(2)
    mean, std = rm.predict_rewards(trained.model, task["obs"], task["act"])
    assert mean.shape == std.shape == (len(task["obs"]),)
    assert np.all(std >= 0)
    assert spearmanr(mean, task["true"]).statistic > 0.9


def test_members_differ_because_of_init_and_bootstrap(task, trained):
    params = [torch.cat([p.flatten() for p in n.parameters()]) for n in trained.model.networks]
    assert not torch.equal(params[0], params[1])
    assert not torch.equal(params[1], params[2])


def test_training_is_seeded_and_leaves_global_state_alone(task):
    small = rm.TrainConfig(max_epochs=2, patience=2, seed=3)
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = rm.train(task["pairs"], hidden_sizes=(8,), config=small)
    assert torch.equal(torch.rand(1), expected)  # the caller's generator did not move
    assert torch.get_num_threads() == threads
    b = rm.train(task["pairs"], hidden_sizes=(8,), config=small)
    ra, _ = rm.predict_rewards(a.model, task["obs"], task["act"])
    rb, _ = rm.predict_rewards(b.model, task["obs"], task["act"])
    np.testing.assert_array_equal(ra, rb)


def test_a_tie_is_a_half_target_whose_loss_is_least_at_equal_sums():
    # One constant network (output = bias b): a 3-step segment against a 1-step one has
    # logit 2b, and a tie's loss -log(0.5) is reached only at b = 0.
    pairs = rm.trajectory_pairs(
        observations=np.zeros((4, 1)),
        actions=np.zeros((4, 1)),
        first=[[0, 3]],
        second=[[3, 4]],
        label=[0.5],
    )
    config = rm.ModelConfig(kind="trajectory", observation_dim=1, action_dim=1, hidden_sizes=())
    network = rm._network(config)
    torch.nn.init.zeros_(network[0].weight)
    x = torch.zeros((4, 2))
    losses = {}
    for bias in (-0.5, 0.0, 0.5):
        torch.nn.init.constant_(network[0].bias, bias)
        with torch.no_grad():
            losses[bias] = float(rm._loss(network, x, pairs, np.array([0])))
    assert losses[0.0] == pytest.approx(math.log(2))
    assert losses[-0.5] > losses[0.0] and losses[0.5] > losses[0.0]
    # Trained on ties only between segments of unequal length and identical steps, every
    # member learns a zero reward and predicts 0.5.
    ties = rm.trajectory_pairs(
        observations=np.zeros((40, 2)),
        actions=np.zeros((40, 1)),
        first=[[0, 5], [10, 15], [20, 25], [30, 35]],
        second=[[5, 8], [15, 17], [25, 26], [35, 39]],
        label=[0.5] * 4,
    )
    config = rm.TrainConfig(max_epochs=150, patience=150, learning_rate=0.05)
    result = rm.train(ties, hidden_sizes=(), config=config)
    assert result.metrics is not None and math.isnan(result.metrics.accuracy)
    assert rm.pair_probabilities(result.model, ties) == pytest.approx(0.5, abs=0.05)


def test_disagreement_is_larger_far_from_the_training_data(task, trained):
    inside = rm.pair_disagreement(trained.model, task["pairs"])
    far = rm.trajectory_pairs(
        observations=task["obs"] * 8.0,
        actions=task["act"] * 8.0,
        first=task["pairs"].first,
        second=task["pairs"].second,
    )  # unlabelled candidates
    outside = rm.pair_disagreement(trained.model, far)
    assert inside.shape == outside.shape == (task["pairs"].n_pairs,)
    assert np.all(np.isfinite(inside)) and np.all(np.isfinite(outside))
    assert np.all(inside >= 0) and inside.mean() > 0
    assert outside.mean() > inside.mean()


def test_save_then_load_gives_identical_predictions_and_config(task, trained, tmp_path):
    path = rm.save(trained.model, tmp_path / "v1")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "weights.safetensors"]
    stored = json.loads((path / "config.json").read_text())
    assert stored["format_version"] == rm.FORMAT_VERSION
    assert stored["kind"] == "trajectory" and stored["input_dim"] == OBS_DIM + ACT_DIM
    assert stored["hidden_sizes"] == [16, 16] and stored["members"] == 3
    loaded = rm.load(path)
    assert loaded.config == trained.model.config
    np.testing.assert_array_equal(loaded.mean, trained.model.mean)
    np.testing.assert_array_equal(loaded.std, trained.model.std)
    for before, after in zip(
        rm.predict_rewards(trained.model, task["obs"], task["act"]),
        rm.predict_rewards(loaded, task["obs"], task["act"]),
        strict=True,
    ):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(
        rm.pair_disagreement(trained.model, task["pairs"]),
        rm.pair_disagreement(loaded, task["pairs"]),
    )


def test_an_interrupted_save_leaves_nothing_and_a_version_is_never_overwritten(
    trained, tmp_path, monkeypatch
):
    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(rm.json, "dump", crash)  # after the weights, before the config
    with pytest.raises(OSError, match="disk full"):
        rm.save(trained.model, tmp_path / "v1")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    rm.save(trained.model, tmp_path / "v1")
    weights = (tmp_path / "v1" / "weights.safetensors").read_bytes()
    other = rm.train(
        rm.trajectory_pairs(
            observations=np.ones((30, OBS_DIM)) * np.arange(30)[:, None],
            actions=np.zeros((30, ACT_DIM)),
            first=[[0, 3], [10, 13], [20, 23]],
            second=[[3, 6], [13, 16], [23, 26]],
            label=[1.0, 0.0, 1.0],
        ),
        hidden_sizes=(16, 16),
        config=rm.TrainConfig(max_epochs=1),
    ).model
    with pytest.raises(FileExistsError):
        rm.save(other, tmp_path / "v1")
    assert (tmp_path / "v1" / "weights.safetensors").read_bytes() == weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]


def test_warm_start_begins_at_a_lower_loss_and_stops_no_later(task, trained):
    # A second version trained on the same data with a different split seed.
    config = rm.TrainConfig(max_epochs=25, batch_size=64, learning_rate=5e-3, patience=5, seed=1)
    cold = rm.train(task["pairs"], hidden_sizes=(16, 16), config=config)
    warm = rm.train(task["pairs"], hidden_sizes=(16, 16), config=config, init=trained.model)
    assert warm.warm_started and not cold.warm_started
    assert max(warm.initial_validation_loss) < min(cold.initial_validation_loss)
    assert sum(warm.epochs) <= sum(cold.epochs)
    assert warm.metrics is not None and warm.metrics.accuracy > 0.85
    # A different architecture cannot take the weights: it starts afresh.
    other = rm.train(
        task["pairs"], hidden_sizes=(8,), config=rm.TrainConfig(max_epochs=1), init=trained.model
    )
    assert not other.warm_started


def test_text_head_learns_a_score_order_from_embeddings():
    rng = np.random.default_rng(2)
    n_items, dim = 60, 12
    embeddings = rng.normal(size=(n_items, dim))
    quality = embeddings @ rng.normal(size=dim)
    i = rng.integers(0, n_items, size=300)
    j = (i + rng.integers(1, n_items, size=300)) % n_items
    label = (quality[i] > quality[j]).astype(float)
    pairs = rm.text_pairs(embeddings=embeddings, first=i, second=j, label=label)
    result = rm.train(pairs, config=rm.TrainConfig(max_epochs=40, learning_rate=1e-2, patience=5))
    assert result.model.config.kind == "text" and result.model.config.hidden_sizes == ()
    assert result.metrics is not None and result.metrics.accuracy > 0.85
    scores, spread = rm.predict_scores(result.model, embeddings)
    assert scores.shape == spread.shape == (n_items,)
    assert spearmanr(scores, quality).statistic > 0.9
    with pytest.raises(ValueError, match="use predict_scores"):
        rm.predict_rewards(result.model, embeddings, np.zeros((n_items, 1)))


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"first": [[0, 11]]}, "first"),
        ({"second": [[-1, 2]]}, "second"),
        ({"second": [[4, 4]]}, "second"),
        ({"actions": np.zeros((9, ACT_DIM))}, "actions"),
        ({"observations": np.full((10, OBS_DIM), np.nan)}, "observations"),
        ({"label": [1.5]}, "label"),
        ({"label": [math.nan]}, "label"),
        ({"first": [[0, 2], [2, 4]]}, "first"),
    ],
)
def test_bad_trajectory_inputs_raise_naming_the_argument(kwargs, named):
    arguments = {
        "observations": np.zeros((10, OBS_DIM)),
        "actions": np.zeros((10, ACT_DIM)),
        "first": [[0, 2]],
        "second": [[2, 5]],
        "label": [1.0],
    } | kwargs
    with pytest.raises(ValueError, match=named):
        rm.trajectory_pairs(**arguments)


def test_bad_inputs_to_a_trained_model_raise_naming_the_argument(task, trained):
    with pytest.raises(ValueError, match="observations"):
        rm.predict_rewards(trained.model, np.zeros((5, OBS_DIM + 1)), np.zeros((5, ACT_DIM)))
    with pytest.raises(ValueError, match="actions"):
        rm.predict_rewards(trained.model, np.zeros((5, OBS_DIM)), np.zeros((5, ACT_DIM + 1)))
    with pytest.raises(ValueError, match="observations"):
        rm.predict_rewards(trained.model, np.full((5, OBS_DIM), np.inf), np.zeros((5, ACT_DIM)))
    with pytest.raises(ValueError, match="embeddings"):
        rm.text_pairs(embeddings=np.full((3, 4), np.nan), first=[0], second=[1])
    with pytest.raises(ValueError, match="second"):
        rm.text_pairs(embeddings=np.zeros((3, 4)), first=[0], second=[3])
    wrong_dims = rm.trajectory_pairs(
        observations=np.zeros((10, OBS_DIM + 1)),
        actions=np.zeros((10, ACT_DIM)),
        first=[[0, 2]],
        second=[[2, 5]],
    )
    with pytest.raises(ValueError, match="pairs"):
        rm.pair_disagreement(trained.model, wrong_dims)
    with pytest.raises(ValueError, match="members"):
        rm.train(task["pairs"], members=2)


def test_the_module_imports_only_numpy_torch_safetensors_and_the_standard_library():
    import ast
    import sys
    from pathlib import Path

    source = Path(rm.__file__).read_text()
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: the file must work on its own"
            roots.add((node.module or "").split(".")[0])
    third_party = roots - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"numpy", "torch", "safetensors"}


def test_the_documented_loading_snippet_runs(trained, tmp_path, monkeypatch):
    import sys

    snippet = rm.__doc__.split("training script can copy this one\nfile and load an artifact")[1]
    block = snippet.split("::\n\n", 1)[1].split("\n\nPure numpy")[0]
    lines = [line[4:] for line in block.splitlines() if line.strip()]
    assert 6 <= len(lines) <= 12
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "reward_model", rm)  # as if the file were copied
    rm.save(trained.model, "artifacts/campaign-7/v3")
    namespace: dict = {}
    exec("\n".join(lines), namespace)
    assert namespace["mean"].shape == namespace["std"].shape == (100,)
