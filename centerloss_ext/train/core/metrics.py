"""How good are the features? Measures that look at the features themselves, not at the
classifier's maximum probability:

- k-NN accuracy: each query takes the label of its nearest gallery features;
- nearest-center accuracy: each feature takes the label of its nearest learned center;
- intra/inter ratio: mean distance to the own class mean over mean distance between class
  means (smaller = tighter, better separated clusters);
- verification: cosine similarity of L2-normalised features on same/different-identity
  pairs: ROC AUC, TAR at a given FAR, best-threshold accuracy.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def extract_features(
    embed: Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[Tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    logits_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    autocast_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Runs ``embed`` over ``batches`` of (inputs, labels); returns float32 CPU features,
    labels and, with ``logits_fn`` (applied to the features), the predicted classes."""
    feats, labels, preds = [], [], []
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            f = embed(x)
            if logits_fn is not None:
                preds.append(logits_fn(f).argmax(1).cpu())
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y).cpu())
    if not feats:
        raise ValueError("no batches to extract features from")
    return (
        torch.cat(feats),
        torch.cat(labels).long(),
        torch.cat(preds) if logits_fn is not None else None,
    )


def tensor_batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> Iterable[Tuple[torch.Tensor, torch.Tensor]]:
    """In-memory data in order, ``batch_size`` at a time."""
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size], labels[start : start + batch_size]


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def knn_accuracy(
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    query: torch.Tensor,
    query_labels: torch.Tensor,
    ks: Sequence[int] = (1, 5),
) -> Dict[int, float]:
    """Fraction of queries whose k nearest gallery features (Euclidean; on L2-normalised
    features that is the cosine order) vote for their label, for each k in ``ks``. Ties
    go to the label whose votes are nearer."""
    from sklearn.neighbors import NearestNeighbors

    if len(query) == 0:
        raise ValueError("no query features")
    kmax = min(max(ks), len(gallery))
    g, gl, q, ql = _np(gallery), _np(gallery_labels), _np(query), _np(query_labels)
    index = NearestNeighbors(n_neighbors=kmax).fit(g)
    _, nearest = index.kneighbors(q)  # (Q, kmax), nearest first
    classes, neighbour_class = np.unique(gl[nearest], return_inverse=True)
    neighbour_class = neighbour_class.reshape(nearest.shape)
    out = {}
    for k in ks:
        k_eff = min(k, kmax)
        votes = np.zeros((len(q), len(classes)))
        rows = np.arange(len(q))
        for rank in range(k_eff):
            # one vote each, plus a tie-breaker smaller than any vote favouring nearer ones
            np.add.at(votes, (rows, neighbour_class[:, rank]), 1.0 + (k_eff - rank) * 1e-6)
        predicted = classes[votes.argmax(1)]
        out[k] = float((predicted == ql).mean())
    return out


def nearest_center_accuracy(
    features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor
) -> float:
    """Fraction of features whose nearest center (Euclidean) is their own class's."""
    predicted = torch.cdist(features.float(), centers.float().to(features.device)).argmin(1)
    return float((predicted.cpu() == labels.cpu()).float().mean())


def class_means(features: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The classes present and the mean feature of each."""
    classes, inverse = torch.unique(labels, return_inverse=True)
    sums = torch.zeros(len(classes), features.shape[1], dtype=torch.float64)
    sums.index_add_(0, inverse, features.double())
    counts = torch.bincount(inverse, minlength=len(classes)).double()
    return classes, sums / counts[:, None]


def intra_inter_ratio(features: torch.Tensor, labels: torch.Tensor) -> Dict[str, float]:
    """``intra``: mean Euclidean distance of a feature to its class mean; ``inter``: mean
    distance between two class means; ``ratio = intra / inter``. Scale-free, so runs whose
    features have different sizes compare fairly."""
    classes, means = class_means(features, labels)
    if len(classes) < 2:
        raise ValueError("intra/inter ratio needs at least two classes")
    inverse = torch.searchsorted(classes, labels)
    intra = (features.double() - means[inverse]).norm(dim=1).mean()
    pair = torch.cdist(means, means)
    inter = pair.sum() / (len(classes) * (len(classes) - 1))
    return {"intra": float(intra), "inter": float(inter), "ratio": float(intra / inter)}


def l2_normalize(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.float(), dim=1)


def _all_same_pairs(
    order: torch.Tensor, starts: torch.Tensor, counts: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every same-identity pair once, from the label-sorted ``order`` (the classes' runs
    start at ``starts``, ``counts`` long): one triangle per distinct class size."""
    out_i, out_j = [], []
    for c in torch.unique(counts[counts >= 2]).tolist():
        a, b = torch.triu_indices(c, c, offset=1)
        s = starts[counts == c][:, None]
        out_i.append(order[(s + a).reshape(-1)])
        out_j.append(order[(s + b).reshape(-1)])
    return torch.cat(out_i), torch.cat(out_j)


def verification_pairs(
    labels: torch.Tensor, max_pairs: int = 2_000_000, seed: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j), i < j, for same/different-identity verification: every pair
    when there are at most ``max_pairs``; else every same-identity pair when they are at
    most half of ``max_pairs`` (each once), or a seeded sample of half that many, and a
    seeded sample of different-identity pairs for the rest."""
    n = len(labels)
    if n < 2:
        raise ValueError("verification needs at least two images")
    if n * (n - 1) // 2 <= max_pairs:
        i, j = torch.triu_indices(n, n, offset=1)
        return i, j
    g = torch.Generator().manual_seed(seed)
    # same-identity pairs: a random member of a class with >= 2 images, and another of it
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    classes, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    multi = counts >= 2
    pos_i = pos_j = torch.empty(0, dtype=torch.int64)
    if 0 < int((counts * (counts - 1) // 2).sum()) <= max_pairs // 2:
        pos_i, pos_j = _all_same_pairs(order, starts, counts)
    elif multi.any():
        n_pos = max_pairs // 2
        weights = (counts * (counts - 1)).double() * multi
        cls = torch.multinomial(weights, n_pos, replacement=True, generator=g)
        a = (torch.rand(n_pos, generator=g) * counts[cls]).long()
        b = (torch.rand(n_pos, generator=g) * (counts[cls] - 1)).long()
        b = b + (b >= a).long()  # b != a
        pos_i, pos_j = order[starts[cls] + a], order[starts[cls] + b]
    n_neg = max_pairs - len(pos_i)
    neg_i = torch.randint(0, n, (2 * n_neg,), generator=g)
    neg_j = torch.randint(0, n, (2 * n_neg,), generator=g)
    keep = labels[neg_i] != labels[neg_j]
    neg_i, neg_j = neg_i[keep][:n_neg], neg_j[keep][:n_neg]
    i, j = torch.cat([pos_i, neg_i]), torch.cat([pos_j, neg_j])
    return torch.minimum(i, j), torch.maximum(i, j)


def pair_similarities(
    features: torch.Tensor, i: torch.Tensor, j: torch.Tensor, chunk: int = 1 << 20
) -> torch.Tensor:
    """Cosine similarity of the pairs (i[k], j[k]) of L2-normalised ``features``."""
    f = l2_normalize(features)
    return torch.cat(
        [(f[i[s : s + chunk]] * f[j[s : s + chunk]]).sum(1) for s in range(0, len(i), chunk)]
    )


def verification_metrics(
    scores: torch.Tensor, same: torch.Tensor, fars: Sequence[float] = (1e-3, 1e-2)
) -> Dict[str, Any]:
    """ROC of ``scores`` for ``same`` (True = same identity): AUC, TAR at each FAR (the
    best true-accept rate whose false-accept rate is at most FAR; None when there are
    too few different-identity pairs to measure that FAR), and the best accuracy over
    thresholds (chosen on these same pairs, so slightly optimistic). ``roc`` holds the
    curve for plotting."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y, s = _np(same).astype(bool), _np(scores).astype(np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"verification needs both kinds of pairs; got {n_pos} same-identity "
            f"and {n_neg} different-identity pairs"
        )
    fpr, tpr, thresholds = roc_curve(y, s)
    tar = {}
    for far in fars:
        ok = fpr <= far
        tar[f"tar@far={far:g}"] = float(tpr[ok].max()) if n_neg * far >= 1 else None
    accuracy = (tpr * n_pos + (1 - fpr) * n_neg) / (n_pos + n_neg)
    best = int(accuracy.argmax())
    return {
        "roc_auc": float(roc_auc_score(y, s)),
        **tar,
        "best_accuracy": float(accuracy[best]),
        "best_threshold": float(min(thresholds[best], 1.0)),
        "pairs_same": n_pos,
        "pairs_different": n_neg,
        "roc": {"fpr": fpr, "tpr": tpr},
    }


def spread_in_span(features: torch.Tensor, directions: torch.Tensor) -> Dict[str, float]:
    """How ``features`` spread, L2-normalised as the cosine similarity sees them:
    ``effective_dim``, the participation ratio (Σλ)²/Σλ² of their covariance's eigenvalues
    (1: all on one axis, D: even in every direction), and ``in_span``, the fraction of
    their variance inside the span of ``directions`` (L2-normalised, differences from their
    mean: e.g. the training classes' mean features). Open-set use: an ``in_span`` near 1
    means new classes can differ only along the few directions the training classes use."""
    f = l2_normalize(features).double()
    f = f - f.mean(0)
    eig = torch.linalg.eigvalsh(f.T @ f / len(f)).clamp(min=0)
    d = l2_normalize(directions).double()
    d = d - d.mean(0)
    _, s, vh = torch.linalg.svd(d, full_matrices=False)
    basis = vh[s > s.max() * 1e-6]
    inside = (f @ basis.T).pow(2).sum() / f.pow(2).sum()
    return {"effective_dim": float(eig.sum() ** 2 / eig.pow(2).sum()), "in_span": float(inside)}


def same_nearest_share(
    scores: torch.Tensor,
    same: torch.Tensor,
    nearest_i: torch.Tensor,
    nearest_j: torch.Tensor,
    far: float,
) -> Dict[str, float]:
    """Of the different-identity pairs, the share whose two members have the same nearest
    reference (e.g. training class): among all of them (``all``) and among the top ``far``
    fraction by score (``false_accepts``: the pairs a threshold at that FAR accepts). A
    ``false_accepts`` share far above ``all`` says the false accepts are pairs the network
    maps onto the same training class."""
    neg = ~same
    coincide = (nearest_i == nearest_j)[neg]
    k = max(1, int(far * int(neg.sum())))
    top = torch.topk(scores[neg].double(), k).indices
    return {
        "all": float(coincide.double().mean()),
        "false_accepts": float(coincide[top].double().mean()),
    }


def fold_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold (a pair is "same" when ``score >= threshold``) with the best accuracy
    on these pairs, among every midpoint between consecutive distinct scores plus one below
    the smallest (smallest - 1) and one above the largest (largest + 1); the smallest
    threshold wins ties."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    distinct = np.unique(s)
    candidates = np.concatenate(
        [[distinct[0] - 1.0], (distinct[:-1] + distinct[1:]) / 2, [distinct[-1] + 1.0]]
    )
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    below = np.searchsorted(s_sorted, candidates, side="left")  # pairs called "different"
    same_below = np.concatenate([[0], np.cumsum(y_sorted)])[below]
    correct = (below - same_below) + (int(y.sum()) - same_below)
    return float(candidates[int(np.argmax(correct))])  # argmax: the first, smallest, of ties


def kfold_verification(scores: Any, same: Any, folds: Sequence[int]) -> Dict[str, Any]:
    """The LFW protocol: for each fold k, the threshold chosen on the other folds
    (fold_threshold) is applied to fold k's pairs; ``accuracy`` is the mean of the fold
    accuracies, ``accuracy_std`` their population standard deviation, ``folds`` each
    fold's accuracy and threshold (in fold order)."""
    s, y, f = _np(scores).astype(np.float64), _np(same).astype(bool), np.asarray(folds)
    names = np.unique(f)
    if len(names) < 2:
        raise ValueError("the k-fold protocol needs at least two folds")
    rows = []
    for k in names:
        test = f == k
        threshold = fold_threshold(s[~test], y[~test])
        accuracy = float(((s[test] >= threshold) == y[test]).mean())
        rows.append({"accuracy": accuracy, "threshold": threshold})
    accuracies = np.array([r["accuracy"] for r in rows])
    return {
        "accuracy": float(accuracies.mean()),
        "accuracy_std": float(accuracies.std()),
        "folds": rows,
    }
