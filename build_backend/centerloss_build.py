"""The PEP 517 build backend of centerloss_ext: setuptools.build_meta, built against the
torch of the environment being installed into, so that a plain `pip install .` works.

A C++ extension must be compiled against the torch that will import it. pip builds in an
isolated environment that hides the user's packages, and pyproject.toml cannot switch
that off; listing torch in `requires` would make pip install a second torch (gigabytes)
and build against whichever version it picks. Instead, each hook here first finds the
target environment's torch without importing it (importlib.metadata, in a subprocess with
a timeout), trying in order:

  1. $CENTERLOSS_TORCH_PYTHON    a python executable or an environment folder (override;
                                 when set, nothing else is tried)
  2. the interpreter running the build, with PYTHONPATH, PYTHONNOUSERSITE and PYTHONHOME
     removed (pip's isolation hides the user's packages only through those)
  3. the parent process's first command-line argument when it names a python (build
     frontends that run the backend under their own interpreter: python -m build, pip's
     venv isolation); when that python belongs to the build interpreter's environment
     (pip's default isolation), that environment is the target, and the search ends
  4. $VIRTUAL_ENV, then $CONDA_PREFIX

The folder holding that torch goes at the *end* of sys.path (behind the build tools), the
only extra build requirement is ninja, and the interpreter and torch used are reported on
stderr (`pip install -v .` shows them). When no candidate has torch, the build stops at
once, saying so: an isolated build would otherwise fetch the newest torch on its own and
produce an extension the installed torch refuses. With `--no-build-isolation` the same
path runs and finds torch already importable. centerloss_ext/_loader.py still checks at
import that the running torch is the one built against.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

from setuptools import build_meta as _setuptools

OVERRIDE = "CENTERLOSS_TORCH_PYTHON"
PROBE_TIMEOUT_S = 30.0
# what pip's isolation (and a user's environment) may set that hides the user's packages
HIDING_VARIABLES = ("PYTHONPATH", "PYTHONNOUSERSITE", "PYTHONHOME")

# Run by each candidate interpreter: where its torch is, without importing torch.
_PROBE = r"""
import importlib.util, json, os, sys
from importlib.metadata import PackageNotFoundError, distribution
facts = {"python": sys.executable, "prefix": sys.prefix,
         "cache_tag": sys.implementation.cache_tag,
         "python_version": "%d.%d" % sys.version_info[:2]}
try:
    dist = distribution("torch")
except PackageNotFoundError:
    dist = None
if dist is not None:
    spec = importlib.util.find_spec("torch")  # finds the package, does not run it
    if spec is not None and spec.submodule_search_locations:
        facts["torch_version"] = dist.version
        facts["torch_root"] = os.path.dirname(list(spec.submodule_search_locations)[0])
print(json.dumps(facts))
"""


class TorchNotFound(SystemExit):
    """No candidate has torch: exits with the message (no traceback under pip)."""


def _env_python(prefix: str) -> str:
    """The python of an environment folder (venv or conda)."""
    if os.name == "nt":
        return os.path.join(prefix, "python.exe")
    return os.path.join(prefix, "bin", "python")


def _override_python(value: str) -> str:
    return _env_python(value) if os.path.isdir(value) else value


def _parent_python() -> Optional[str]:
    """The parent process's first command-line argument when it names a python (Linux's
    /proc; elsewhere `ps`)."""
    ppid = os.getppid()
    try:
        with open(f"/proc/{ppid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0")[0].decode()
        cwd = os.readlink(f"/proc/{ppid}/cwd")
    except (OSError, UnicodeDecodeError):
        try:
            argv0 = subprocess.run(
                ["ps", "-o", "args=", "-p", str(ppid)], capture_output=True, text=True, timeout=10
            ).stdout.split()[0]
            cwd = None
        except (OSError, subprocess.SubprocessError, IndexError):
            return None
    if not os.path.basename(argv0).lower().startswith("python"):
        return None
    if os.sep not in argv0:  # found on the parent's PATH
        import shutil

        return shutil.which(argv0)
    if not os.path.isabs(argv0):
        if cwd is None:
            return None
        argv0 = os.path.join(cwd, argv0)
    return argv0


def probe(python: str, timeout: float = PROBE_TIMEOUT_S) -> Tuple[Optional[Dict], str]:
    """(facts, "") when `python` ran the probe, else (None, why not)."""
    if not os.path.isfile(python):
        return None, "no such file"
    env = {k: v for k, v in os.environ.items() if k not in HIDING_VARIABLES}
    try:
        run = subprocess.run(
            [python, "-c", _PROBE],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, f"did not answer within {timeout:.0f} s"
    except OSError as e:
        return None, f"could not run ({e.strerror or e})"
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"failed ({last})"
    try:
        return json.loads(run.stdout.strip().splitlines()[-1]), ""
    except (ValueError, IndexError):
        return None, "printed something unexpected"


class _Search:
    """Probes candidates in turn, keeping a line per miss for the error message."""

    def __init__(self):
        self.looked: List[str] = []

    def attempt(self, how: str, python: str) -> Optional[Dict]:
        """The probe's facts (with "how"), or None when `python` did not run; a miss is
        recorded. Usable when "usable" is true."""
        facts, why = probe(python)
        if facts is None:
            self.looked.append(f"{python} ({how}): {why}")
            return None
        facts["how"] = how
        where = f"{facts['prefix']} ({how}: {python})"
        ours = sys.implementation.cache_tag
        facts["usable"] = "torch_version" in facts and facts["cache_tag"] == ours
        if "torch_version" not in facts:
            self.looked.append(f"{where}: no torch")
        elif not facts["usable"]:
            self.looked.append(
                f"{where}: torch {facts['torch_version']} for Python "
                f"{facts['python_version']}, but this build runs Python "
                f"{sys.version_info[0]}.{sys.version_info[1]}"
            )
        return facts

    def fail(self) -> "TorchNotFound":
        return TorchNotFound(
            "centerloss_ext: no PyTorch found to build against. Install torch first, into "
            "the environment centerloss_ext goes into (pip install torch), then run this "
            "command again. Looked in: " + "; ".join(self.looked) + ". If torch is in "
            f"another environment, name its python: {OVERRIDE}=/path/to/env/bin/python."
        )


def _same_environment(a: Dict, b: Dict) -> bool:
    return os.path.realpath(a["prefix"]) == os.path.realpath(b["prefix"])


def find_torch() -> Dict:
    """The target environment's torch: the facts of the first candidate that has it.
    Raises TorchNotFound (an exit with the install-torch-first message) when none has.

    The fallbacks beyond the build's own interpreter are for frontends that run the
    backend under an interpreter of their own; when the frontend's python is the build's
    environment (pip's default isolation), that environment is the target, and one
    without torch is an error, whatever else $VIRTUAL_ENV or $CONDA_PREFIX name."""
    search = _Search()
    override = os.environ.get(OVERRIDE)
    if override:
        facts = search.attempt(f"${OVERRIDE}", _override_python(override))
        if facts and facts["usable"]:
            return facts
        raise search.fail()
    build = search.attempt("the interpreter running this build", sys.executable)
    if build and build["usable"]:
        return build
    parent = _parent_python()
    if parent:
        facts = search.attempt("the python that started the build", parent)
        if facts and facts["usable"]:
            return facts
        if facts and build and _same_environment(facts, build):
            raise search.fail()
    for var in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        if os.environ.get(var):
            facts = search.attempt(f"${var}", _env_python(os.environ[var]))
            if facts and facts["usable"]:
                return facts
    raise search.fail()


def use_torch() -> Dict:
    """Makes the target environment's torch importable for setup.py (behind the build
    tools) and says which one on stderr."""
    facts = find_torch()
    root = facts["torch_root"]
    if root not in sys.path:
        sys.path.append(root)
        importlib.invalidate_caches()
    spec = importlib.util.find_spec("torch")
    imported = os.path.dirname(list(spec.submodule_search_locations)[0]) if spec else None
    if imported is None or os.path.realpath(imported) != os.path.realpath(root):
        raise SystemExit(
            f"centerloss_ext: the build would import the torch in {imported}, not the "
            f"target environment's torch {facts['torch_version']} in {root} (found via "
            f"{facts['how']}); remove torch from the build requirements, or build with "
            "pip install --no-build-isolation ."
        )
    print(
        f"centerloss_ext: building against torch {facts['torch_version']} in {root}, "
        f"found via {facts['how']} ({facts['python']})",
        file=sys.stderr,
        flush=True,
    )
    return facts


# --- the PEP 517 / 660 hooks: setuptools' own, after use_torch() ---------------------


def get_requires_for_build_wheel(config_settings=None):
    use_torch()
    return _setuptools.get_requires_for_build_wheel(config_settings) + ["ninja"]


def get_requires_for_build_editable(config_settings=None):
    use_torch()
    return _setuptools.get_requires_for_build_editable(config_settings) + ["ninja"]


def get_requires_for_build_sdist(config_settings=None):
    use_torch()
    return _setuptools.get_requires_for_build_sdist(config_settings)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    use_torch()
    return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    use_torch()
    return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    use_torch()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    use_torch()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory, config_settings=None):
    use_torch()
    return _setuptools.build_sdist(sdist_directory, config_settings)
