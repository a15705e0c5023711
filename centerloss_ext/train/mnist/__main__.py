"""`python -m centerloss_ext.train.mnist`: centerloss-mnist (see ``cli``)."""

from ..core.cli import require

# before the first import of an optional package: a missing one is one line, not a traceback
require("centerloss-mnist", __name__)

if __name__ == "__main__":
    from .cli import main

    main()
