"""`centerloss-faces embed` and `identify`: enrol a folder of images as L2-normalised
features (``.npz`` or ``.pt``), and rank the enrolled identities for query images by the
cosine similarity to each identity's template (the normalised mean of its features)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .common import TrainingError
from .evaluate import l2_normalize
from .faces_eval import features
from .faces_model import FaceNet, Runtime, load_face_model
from .folders import labelled_images


@torch.no_grad()
def embed_images(model: FaceNet, image_size: int, paths: Sequence[Path],
                 device: torch.device, autocast: Optional[torch.dtype], batch_size: int,
                 workers: int) -> torch.Tensor:
    """L2-normalised features of the images, in order."""
    feats, _, _ = features(model, [(p, 0) for p in paths], image_size, device, autocast,
                           batch_size, workers)
    return l2_normalize(feats)


def save_embeddings(path: Path, features: torch.Tensor, paths: Sequence[str],
                    labels: Sequence[str], meta: Dict[str, Any]) -> None:
    """``.npz`` (features, paths, labels arrays) or ``.pt`` (a dict) by extension."""
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, features=features.numpy(), paths=np.array(paths, dtype=str),
                 labels=np.array(labels, dtype=str), meta=json.dumps(meta))
    elif path.suffix == ".pt":
        torch.save({"features": features, "paths": list(paths), "labels": list(labels),
                    "meta": meta}, path)
    else:
        raise TrainingError(f"--out {path}: use a .npz or .pt file name")


def load_embeddings(path: Path) -> Tuple[torch.Tensor, List[str], List[str], Dict[str, Any]]:
    """What save_embeddings wrote: features, paths, labels, meta."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"no embeddings file at {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return (torch.from_numpy(z["features"]), [str(s) for s in z["paths"]],
                    [str(s) for s in z["labels"]], json.loads(str(z["meta"])))
    d = torch.load(path, map_location="cpu", weights_only=True)
    return d["features"], d["paths"], d["labels"], d["meta"]


def embed_folder(checkpoint: Path, images: Path, out: Path,
                 runtime: Runtime = Runtime()) -> Dict[str, Any]:
    """The `embed` job: the features of every image under ``images`` (an image in
    ``images/<name>/`` is labelled ``<name>``) written to ``out``."""
    device, autocast = runtime.resolve()
    model, _, ckpt = load_face_model(Path(checkpoint), device)
    root = Path(images)
    items = labelled_images(root)
    feats = embed_images(model, ckpt["model_config"]["image_size"], [p for p, _ in items],
                         device, autocast, runtime.batch_size, runtime.workers)
    paths = [str(p.relative_to(root)) if root.is_dir() else str(p) for p, _ in items]
    labels = [label for _, label in items]
    meta = {"checkpoint": str(checkpoint), "images": str(root),
            "feature_dim": feats.shape[1], "normalized": "l2"}
    save_embeddings(Path(out), feats, paths, labels, meta)
    named = sum(bool(label) for label in labels)
    print(f"wrote {out}: {len(items)} images ({named} labelled, "
          f"{len(set(l for l in labels if l))} identities), {feats.shape[1]}-D features")
    return {"out": str(out), "images": len(items), "labelled": named}


def identity_templates(features: torch.Tensor,
                       labels: Sequence[str]) -> Tuple[List[str], torch.Tensor]:
    """One enrolled template per identity: the normalised mean of its normalised features
    (unlabelled gallery images are left out)."""
    names = sorted({label for label in labels if label})
    if not names:
        raise TrainingError("the gallery has no labelled images: embed a folder with one "
                            "subfolder per identity")
    index = {name: i for i, name in enumerate(names)}
    rows = [i for i, label in enumerate(labels) if label]
    owner = torch.tensor([index[labels[i]] for i in rows])
    sums = torch.zeros(len(names), features.shape[1])
    sums.index_add_(0, owner, l2_normalize(features[rows]))
    return names, l2_normalize(sums)


def identify(checkpoint: Path, gallery: Path, queries: Sequence[Path], top_k: int = 5,
             threshold: Optional[float] = None,
             runtime: Runtime = Runtime()) -> List[Dict[str, Any]]:
    """The `identify` job: for each query image (files, or folders of them) the ``top_k``
    enrolled identities of ``gallery`` by cosine similarity; the answer is the best one,
    or None ("unknown") below ``threshold``."""
    device, autocast = runtime.resolve()
    model, _, ckpt = load_face_model(Path(checkpoint), device)
    g_feats, _, g_labels, _ = load_embeddings(Path(gallery))
    if g_feats.shape[1] != ckpt["model_config"]["feature_dim"]:
        raise TrainingError(f"{gallery} holds {g_feats.shape[1]}-D features; "
                            f"{checkpoint} makes {ckpt['model_config']['feature_dim']}-D")
    names, templates = identity_templates(g_feats, g_labels)
    items = [item for q in queries for item in labelled_images(Path(q))]
    embedded = embed_images(model, ckpt["model_config"]["image_size"], [p for p, _ in items],
                            device, autocast, runtime.batch_size, runtime.workers)
    scores = embedded @ templates.T                               # cosine similarities
    k = min(top_k, len(names))
    top_scores, top_idx = scores.topk(k, dim=1)
    results = []
    for (path, _), s_row, i_row in zip(items, top_scores.tolist(), top_idx.tolist()):
        matches = [{"identity": names[i], "score": round(s, 6)} for s, i in zip(s_row, i_row)]
        known = threshold is None or matches[0]["score"] >= threshold
        results.append({"query": str(path), "identity": matches[0]["identity"] if known
                        else None, "matches": matches})
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
