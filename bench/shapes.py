"""The shape grid: named groups of (B, D, C) and the parsing of ``--shapes``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple


@dataclass(frozen=True)
class Shape:
    """A problem size: batch B, feature width D, number of classes C."""

    B: int
    D: int
    C: int
    group: str = "custom"

    @property
    def label(self) -> str:
        return f"B={self.B:,} D={self.D:,} C={self.C:,}"


# group name -> (D, C, batch sizes, GPU only). Several batch sizes per group give the
# time-versus-batch-size plot its lines.
GROUPS: Dict[str, Tuple[int, int, Tuple[int, ...], bool]] = {
    "mnist": (2, 10, (128, 512, 2048), False),  # LeNet++ on MNIST
    "face10k": (512, 10_000, (128, 512, 2048), False),  # face training, 10k identities
    "face100k": (512, 100_000, (512, 1024, 4096), False),  # face training, 100k identities
    "bandwidth": (512, 100_000, (16_384, 65_536), True),  # memory-bound; GPU only
}

# --quick: the sizes the issue names, nothing else.
QUICK = {
    "cpu": [Shape(128, 2, 10, "mnist"), Shape(512, 512, 10_000, "face10k")],
    "cuda": [
        Shape(128, 2, 10, "mnist"),
        Shape(512, 512, 10_000, "face10k"),
        Shape(1024, 512, 100_000, "face100k"),
        Shape(65_536, 512, 100_000, "bandwidth"),
    ],
}


def group_shapes(name: str, device: str) -> List[Shape]:
    D, C, batches, gpu_only = GROUPS[name]
    if gpu_only and device != "cuda":
        return []
    return [Shape(B, D, C, name) for B in batches]


def parse_shapes(spec: str, device: str) -> List[Shape]:
    """``--shapes``: comma-separated group names (``mnist,face10k``), ``all``, or explicit
    ``BxDxC`` sizes (``512x512x10000``), mixed freely. GPU-only groups are dropped on CPU
    unless named by explicit size."""
    shapes: List[Shape] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item == "all":
            for name in GROUPS:
                shapes += group_shapes(name, device)
        elif item in GROUPS:
            shapes += group_shapes(item, device)
        else:
            parts = item.lower().replace("_", "").split("x")
            if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
                raise ValueError(
                    f"--shapes: {item!r} is neither a group "
                    f"({', '.join(GROUPS)}, all) nor BxDxC with positive sizes"
                )
            shapes.append(Shape(*map(int, parts)))
    unique: List[Shape] = []
    for shape in shapes:
        if all((s.B, s.D, s.C) != (shape.B, shape.D, shape.C) for s in unique):
            unique.append(shape)
    return unique
