"""The evaluation measures of centerloss_ext.train.core.metrics, on hand-checkable data."""

from __future__ import annotations

import math

import pytest
import torch

from centerloss_ext.train.core import metrics as ev


def test_knn_accuracy_votes_and_breaks_ties_by_distance():
    gallery = torch.tensor([[0.0], [1.0], [1.1], [10.0], [10.2], [10.4]])
    g_labels = torch.tensor([0, 1, 1, 2, 2, 2])
    query = torch.tensor([[0.2], [10.1], [0.9]])
    q_labels = torch.tensor([0, 2, 0])
    acc = ev.knn_accuracy(gallery, g_labels, query, q_labels, ks=(1, 3))
    # 1-NN: 0->0 ok, 10.1->2 ok, 0.9->1 wrong. 3-NN: 0.2 -> {0,1,1} = 1 wrong, 10.1 ok,
    # 0.9 -> {1,1,0} = 1 wrong
    assert acc[1] == pytest.approx(2 / 3)
    assert acc[3] == pytest.approx(1 / 3)
    # a 2-vote tie (k=2): the nearer label wins
    tie = ev.knn_accuracy(
        torch.tensor([[0.0], [1.0]]),
        torch.tensor([5, 7]),
        torch.tensor([[0.4]]),
        torch.tensor([5]),
        ks=(2,),
    )
    assert tie[2] == 1.0


def test_nearest_center_accuracy():
    centers = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    feats = torch.tensor([[0.5, 0.1], [3.0, 0.0], [1.9, 0.0], [2.1, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])
    assert ev.nearest_center_accuracy(feats, labels, centers) == pytest.approx(0.75)


def test_intra_inter_ratio_by_hand():
    # class 0 at (±1, 0) around (0, 0); class 1 at (10, ±1) around (10, 0)
    feats = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [10.0, -1.0], [10.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    r = ev.intra_inter_ratio(feats, labels)
    assert r["intra"] == pytest.approx(1.0)
    assert r["inter"] == pytest.approx(10.0)
    assert r["ratio"] == pytest.approx(0.1)
    # scale-free
    assert ev.intra_inter_ratio(feats * 7, labels)["ratio"] == pytest.approx(0.1)


def test_verification_pairs_all_and_sampled():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    i, j = ev.verification_pairs(labels)
    assert len(i) == 15 and bool((i < j).all())
    labels = torch.arange(400) % 20  # 79,800 pairs
    i, j = ev.verification_pairs(labels, max_pairs=2000, seed=1)
    same = labels[i] == labels[j]
    assert len(i) == 2000 and bool((i < j).all())
    assert int(same.sum()) == 1000  # half same-identity pairs
    i2, _ = ev.verification_pairs(labels, max_pairs=2000, seed=1)
    assert torch.equal(i, i2)  # seeded


def test_verification_pairs_take_every_same_pair_once_when_few():
    """More pairs than max_pairs in all, but fewer same-identity pairs than half of it:
    each same-identity pair once (none drawn twice), the rest different-identity."""
    labels = torch.cat([torch.arange(300) % 100, torch.tensor([100, 101, 101, 101, 101])])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))]
    i, j = ev.verification_pairs(labels, max_pairs=4000, seed=2)
    same = labels[i] == labels[j]
    assert len(i) == 4000 and bool((i < j).all())
    assert int(same.sum()) == 100 * 3 + 6  # C(3,2) per identity of 3, C(4,2) for 101
    pairs = set(zip(i[same].tolist(), j[same].tolist()))
    assert len(pairs) == 306
    assert all(labels[a] == labels[b] for a, b in pairs)


def test_verification_metrics():
    same = torch.tensor([True] * 4 + [False] * 2000)
    scores = torch.cat([torch.tensor([0.9, 0.8, 0.7, 0.2]), torch.linspace(-0.5, 0.5, 2000)])
    m = ev.verification_metrics(scores, same)
    # 3 of 4 positives above every negative; the fourth (0.2) below 30% of negatives
    assert m["tar@far=0.001"] == pytest.approx(0.75)
    assert m["roc_auc"] == pytest.approx((3 * 2000 + 1400) / 8000, abs=1e-3)
    assert m["best_accuracy"] == pytest.approx((3 + 2000) / 2004)
    assert 0.5 <= m["best_threshold"] <= 0.7
    few = ev.verification_metrics(torch.tensor([0.9, 0.1]), torch.tensor([True, False]))
    assert few["tar@far=0.001"] is None  # 1 negative cannot measure 1e-3
    assert few["roc_auc"] == 1.0
    with pytest.raises(ValueError, match="both kinds"):
        ev.verification_metrics(torch.tensor([0.3]), torch.tensor([True]))


def test_pair_similarities_are_cosines():
    f = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    s = ev.pair_similarities(f, torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2]))
    torch.testing.assert_close(s, torch.tensor([0.0, 1 / math.sqrt(2), 1 / math.sqrt(2)]))


def test_import_centerloss_ext_stays_light():
    """The training helpers import matplotlib, scikit-learn and torchvision; the loss
    itself must not (tqdm is left out: torch imports it)."""
    import subprocess
    import sys

    code = (
        "import sys, centerloss_ext; heavy = [m for m in ('matplotlib', 'sklearn', "
        "'torchvision', 'centerloss_ext.train') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


def test_spread_in_span_effective_dimension_and_share_of_variance():
    g = torch.Generator().manual_seed(0)
    # directions: 3 class means along axes 0 and 1 of 6 (their differences span 2 axes)
    directions = torch.tensor(
        [[1.0, 0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0, 0], [-1.0, -1.0, 0, 0, 0, 0]]
    )
    inside = torch.zeros(20000, 6)
    inside[:, :2] = torch.randn(20000, 2, generator=g)
    inside[:, 2] = 0.001  # a constant offset: normalising keeps it tiny
    r = ev.spread_in_span(inside, directions)
    assert r["in_span"] == pytest.approx(1.0, abs=1e-4)
    assert 1.5 < r["effective_dim"] <= 2.0001  # two axes, equal after normalising
    outside = torch.zeros(20000, 6)
    outside[:, 2:] = torch.randn(20000, 4, generator=g)
    r = ev.spread_in_span(outside, directions)
    assert r["in_span"] == pytest.approx(0.0, abs=1e-6)
    assert 3.5 < r["effective_dim"] <= 4.0001
    line = torch.randn(500, 1, generator=g) * torch.tensor([[1.0, 2.0, 0, 0, 0, 0]])
    assert ev.spread_in_span(line, directions)["effective_dim"] == pytest.approx(1.0)


def test_same_nearest_share_counts_impostors_and_the_top_ones():
    # 10 impostor pairs (scores 0.0 .. 0.9) and 2 genuine ones with the highest scores
    scores = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99])
    same = torch.tensor([False] * 10 + [True, True])
    ni = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 5, 5])
    nj = torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 5, 6])  # impostors 8 and 9 coincide
    r = ev.same_nearest_share(scores, same, ni, nj, far=0.2)  # the top 2 impostors
    assert r == {"all": pytest.approx(0.2), "false_accepts": pytest.approx(1.0)}
    r = ev.same_nearest_share(scores, same, ni, nj, far=0.3)
    assert r["false_accepts"] == pytest.approx(2 / 3)
