"""The optional packages the training command lines need (the "train" group of setup.py),
checked before anything imports them, so a missing one is one line naming the group."""
from __future__ import annotations

import sys
from importlib.util import find_spec

# import name -> package name on PyPI
TRAIN = {"torchvision": "torchvision", "numpy": "numpy", "matplotlib": "matplotlib",
         "sklearn": "scikit-learn", "tqdm": "tqdm", "PIL": "pillow"}


def missing() -> list:
    return [pkg for mod, pkg in TRAIN.items() if find_spec(mod) is None]


def require(prog: str, module_name: str) -> None:
    """Run as a command (`python -m`, or the console script `prog`): print one line and
    exit with status 2 when a package is missing; imported as a library: raise
    ImportError with the same line."""
    absent = missing()
    if not absent:
        return
    msg = (f"{prog}: {', '.join(absent)} missing, from the optional \"train\" group: "
           f"pip install \".[train]\" in the centerloss_ext source folder, or "
           f"pip install {' '.join(absent)}")
    import os

    if module_name == "__main__" or os.path.basename(sys.argv[0]) == prog:
        print(msg, file=sys.stderr)
        sys.exit(2)
    raise ImportError(msg)
