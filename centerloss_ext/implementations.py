"""The table of implementations of the functional API: the compiled ops (``ops``) and the
pure-PyTorch reference (``reference``), by number.

Numbers, because the synced update op takes its implementation as an argument, and an
op's arguments are plain values (a number names no module). Each CenterLoss class keeps
its number (``_impl``; the numbers are defined in ``_module_base``, below reference.py,
which needs its own), and ``distributed`` looks the update up here. A module of its own so
that the multi-process sync finds both implementations without module.py, or a single
process, ever importing the sync.
"""

from . import ops, reference
from ._module_base import COMPILED, REFERENCE

__all__ = ["COMPILED", "REFERENCE", "IMPLEMENTATIONS", "GATHERED_UPDATES"]

IMPLEMENTATIONS = (ops, reference)
# What each applies to the gathered batch of the synced step. Its labels were checked on
# their own rank, by the loss before the exchange, so the reference does not read them
# again; the compiled kernels check in the same pass as the update (see
# set_cuda_label_check for CUDA).
GATHERED_UPDATES = (ops.update_centers_, reference.update_checked_centers_)
