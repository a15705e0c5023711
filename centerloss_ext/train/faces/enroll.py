"""`centerloss-faces embed` and `identify`: enrol a folder of images as L2-normalised
features (``.npz`` or ``.pt``), and rank the enrolled identities for query images by the
cosine similarity to each identity's template (the normalised mean of its features)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..core.errors import TrainingError, first_line
from ..core.files import atomic_write, load_tensors, note_outputs
from ..core.metrics import l2_normalize
from .data import labelled_images
from .evaluate import Extraction, checkpoint_extraction, features
from .model import FaceNet, Runtime, load_face_model


@torch.no_grad()
def embed_images(model: FaceNet, paths: Sequence[Path], how: Extraction) -> torch.Tensor:
    """L2-normalised features of the images, in order."""
    feats, _, _ = features(model, [(p, 0) for p in paths], how)
    return l2_normalize(feats)


def save_embeddings(
    path: Path,
    features: torch.Tensor,
    paths: Sequence[str],
    labels: Sequence[str],
    meta: Dict[str, Any],
) -> None:
    """``.npz`` (features, paths, labels arrays) or ``.pt`` (a dict) by extension."""
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        atomic_write(
            path,
            lambda tmp: np.savez(
                tmp,
                features=features.numpy(),
                paths=np.array(paths, dtype=str),
                labels=np.array(labels, dtype=str),
                meta=json.dumps(meta),
            ),
        )
    elif path.suffix == ".pt":
        d = {"features": features, "paths": list(paths), "labels": list(labels), "meta": meta}
        atomic_write(path, lambda tmp: torch.save(d, tmp))
    else:
        raise TrainingError(f"--out {path}: use a .npz or .pt file name")


def load_embeddings(path: Path) -> Tuple[torch.Tensor, List[str], List[str], Dict[str, Any]]:
    """What save_embeddings wrote: features, paths, labels, meta."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"--gallery {path}: no such file")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                _bounded_npz(z, path.stat().st_size)
                got = (
                    torch.from_numpy(z["features"]),
                    [str(s) for s in z["paths"]],
                    [str(s) for s in z["labels"]],
                    json.loads(str(z["meta"])),
                )
        else:
            d = load_tensors(path)  # weights_only, mmap: bounded by the file's size
            got = d["features"], d["paths"], d["labels"], d["meta"]
        return _checked_embeddings(*got)
    except Exception as e:  # truncated, another kind of file, a checkpoint, missing keys
        reason = f"no {e}" if isinstance(e, KeyError) else first_line(e)
        raise TrainingError(
            f"--gallery {path}: not an embeddings file written by `embed` "
            f"({reason}); run `embed` to make one"
        ) from None


def _bounded_npz(z: Any, size: int) -> None:
    """savez stores its arrays uncompressed: a member that inflates beyond the file's own
    size (a zip bomb) is refused before it is read."""
    inflated = sum(info.file_size for info in z.zip.infolist())
    if inflated > size + (1 << 20):
        raise ValueError(f"its arrays inflate to {inflated} bytes from a {size}-byte file")


def _checked_embeddings(
    features: Any, paths: Any, labels: Any, meta: Any
) -> Tuple[torch.Tensor, List[str], List[str], Dict[str, Any]]:
    if not (
        isinstance(features, torch.Tensor) and features.dim() == 2 and features.is_floating_point()
    ):
        raise ValueError("features is not an (images, dim) float array")
    if not (isinstance(paths, list) and isinstance(labels, list)) or not (
        len(paths) == len(labels) == features.shape[0]
    ):
        raise ValueError("paths and labels do not match the features' rows")
    if not all(isinstance(s, str) for s in [*paths, *labels]) or not isinstance(meta, dict):
        raise ValueError("paths, labels or meta of the wrong kind")
    return features, paths, labels, meta


def embed_folder(
    checkpoint: Path, images: Path, out: Path, runtime: Runtime = Runtime()
) -> Dict[str, Any]:
    """The `embed` job: the features of every image under ``images`` (an image in
    ``images/<name>/`` is labelled ``<name>``) written to ``out``."""
    device, autocast = runtime.resolve()
    model, _, ckpt = load_face_model(Path(checkpoint), device)
    root = Path(images)
    items = labelled_images(root)
    feats = embed_images(
        model, [p for p, _ in items], checkpoint_extraction(ckpt, device, autocast, runtime)
    )
    paths = [str(p.relative_to(root)) if root.is_dir() else str(p) for p, _ in items]
    labels = [label for _, label in items]
    meta = {
        "checkpoint": str(checkpoint),
        "images": str(root),
        "feature_dim": feats.shape[1],
        "normalized": "l2",
    }
    save_embeddings(Path(out), feats, paths, labels, meta)
    note_outputs(Path(out).parent, Path(out).name)  # --overwrite of a run there clears it
    named = sum(bool(label) for label in labels)
    print(
        f"wrote {out}: {len(items)} images ({named} labelled, "
        f"{len({label for label in labels if label})} identities), {feats.shape[1]}-D features"
    )
    return {"out": str(out), "images": len(items), "labelled": named}


def identity_templates(
    features: torch.Tensor, labels: Sequence[str]
) -> Tuple[List[str], torch.Tensor]:
    """One enrolled template per identity: the normalised mean of its normalised features
    (unlabelled gallery images are left out)."""
    names = sorted({label for label in labels if label})
    if not names:
        raise TrainingError(
            "the gallery has no labelled images: embed a folder with one subfolder per identity"
        )
    index = {name: i for i, name in enumerate(names)}
    rows = [i for i, label in enumerate(labels) if label]
    owner = torch.tensor([index[labels[i]] for i in rows])
    sums = torch.zeros(len(names), features.shape[1])
    sums.index_add_(0, owner, l2_normalize(features[rows]))
    return names, l2_normalize(sums)


def far_threshold(
    features: torch.Tensor,
    labels: Sequence[str],
    names: Sequence[str],
    templates: torch.Tensor,
    far: float,
) -> Tuple[float, int]:
    """The lowest threshold whose false-accept rate on the gallery is at most ``far``: the
    impostor trials are every labelled gallery image against the templates of the other
    identities, and a score at or above the threshold accepts. Returns the threshold and
    the number of impostor trials (with fewer than 1/far of them the threshold is just
    above the highest impostor score)."""
    rows = [i for i, label in enumerate(labels) if label]
    if len(names) < 2:
        raise TrainingError(
            "--far needs a gallery of at least 2 identities (impostor "
            "scores are an image against another identity); use --threshold"
        )
    owner = torch.tensor([names.index(labels[i]) for i in rows])
    scores = l2_normalize(features[rows]) @ templates.T
    ranked = scores[owner[:, None] != torch.arange(len(names))].sort(descending=True).values
    allowed = int(far * len(ranked))  # impostor trials that may be accepted
    # accept iff score >= threshold: just above the (allowed+1)-th highest impostor score
    return float(torch.nextafter(ranked[allowed], torch.tensor(2.0))), len(ranked)


def identify(
    checkpoint: Path,
    gallery: Path,
    queries: Sequence[Path],
    top_k: int = 5,
    threshold: Optional[float] = None,
    runtime: Runtime = Runtime(),
    far: Optional[float] = None,
) -> List[Dict[str, Any]]:
    """The `identify` job: for each query image (files, or folders of them) the ``top_k``
    enrolled identities of ``gallery`` by cosine similarity; the answer is the best one,
    or None ("unknown") below ``threshold``, or below the threshold picked for a
    false-accept rate ``far`` on the gallery (far_threshold; printed to stderr). Each
    result carries the threshold used."""
    if threshold is not None and far is not None:
        raise TrainingError("give --threshold or --far, not both")
    device, autocast = runtime.resolve()
    model, _, ckpt = load_face_model(Path(checkpoint), device)
    g_feats, _, g_labels, _ = load_embeddings(Path(gallery))
    if g_feats.shape[1] != ckpt["model_config"]["feature_dim"]:
        raise TrainingError(
            f"{gallery} holds {g_feats.shape[1]}-D features; "
            f"{checkpoint} makes {ckpt['model_config']['feature_dim']}-D"
        )
    names, templates = identity_templates(g_feats, g_labels)
    if far is not None:
        threshold, trials = far_threshold(g_feats, g_labels, names, templates, far)
        few = "; too few for that rate: just above the highest" if trials * far < 1 else ""
        print(
            f"--far {far:g}: threshold {threshold:.4f} (from {trials} impostor scores of "
            f"{gallery}{few})",
            file=sys.stderr,
        )
    items = [item for q in queries for item in labelled_images(Path(q))]
    embedded = embed_images(
        model, [p for p, _ in items], checkpoint_extraction(ckpt, device, autocast, runtime)
    )
    scores = embedded @ templates.T  # cosine similarities
    k = min(top_k, len(names))
    top_scores, top_idx = scores.topk(k, dim=1)
    results = []
    for (path, _), s_row, i_row in zip(items, top_scores.tolist(), top_idx.tolist()):
        matches = [{"identity": names[i], "score": round(s, 6)} for s, i in zip(s_row, i_row)]
        known = threshold is None or s_row[0] >= threshold
        results.append(
            {
                "query": str(path),
                "identity": matches[0]["identity"] if known else None,
                "matches": matches,
                "threshold": threshold,
            }
        )
    return results


def print_identities(results: Sequence[Dict[str, Any]], as_json: bool = False) -> None:
    """identify's answers: one block per query (best first), or JSON."""
    if as_json:
        print(json.dumps(list(results), indent=2))
        return
    for r in results:
        answer = r["identity"] if r["identity"] is not None else "unknown"
        print(f"{r['query']}: {answer}")
        for rank, m in enumerate(r["matches"], 1):
            print(f"  {rank}. {m['identity']}  {m['score']:.4f}")
