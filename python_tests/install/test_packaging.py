"""Installing: the build backend finds the target environment's torch the way pip's isolated
build needs it (or stops at once, saying where it looked), the optional dependency groups,
and what happens when an unbuilt source folder shadows the installed package. The real
`pip install .` / `-e .` / no-torch runs are scripts/ci_install_check.sh (minutes each)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import setuptools
import torch

import centerloss_ext
from centerloss_ext import _loader
from helpers import REPO_ROOT

ROOT = REPO_ROOT
BACKEND = ROOT / "build_backend"
INSTALLED = Path(centerloss_ext.__file__).parent  # the built copy this suite runs against
SITE_PACKAGES = Path(setuptools.__file__).parent.parent
TORCH_ROOT = Path(torch.__file__).parent.parent
TORCH_DIST_VERSION = importlib.metadata.version("torch")  # 2.14.1 where torch says 2.14.1+cu130

# What pip's isolated build does to the backend's interpreter: a sitecustomize, reached
# through PYTHONPATH, that drops the environment's site-packages from sys.path; the build
# tools come from an overlay of their own.
_HIDE = """
import sys
hidden = {hidden!r}
sys.path[:] = [p for p in sys.path if p not in hidden]
sys.path.append({overlay!r})
"""


@pytest.fixture(scope="module")
def isolation(tmp_path_factory) -> Path:
    """A PYTHONPATH folder that hides this environment's packages as pip's isolation does,
    with setuptools (only) in an overlay."""
    base = tmp_path_factory.mktemp("isolation")
    overlay = base / "overlay"
    overlay.mkdir()
    for name in ("setuptools", "pkg_resources", "_distutils_hack"):
        if (SITE_PACKAGES / name).exists():
            (overlay / name).symlink_to(SITE_PACKAGES / name)
    hidden = sorted({str(SITE_PACKAGES), str(TORCH_ROOT)})
    (base / "sitecustomize.py").write_text(_HIDE.format(hidden=hidden, overlay=str(overlay)))
    return base


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A virtual environment without torch (nor pip)."""
    where = tmp_path_factory.mktemp("bare") / "venv"
    venv.EnvBuilder(with_pip=False).create(where)
    return str(where / "bin" / "python")


def _backend(
    python: str, code: str, isolation: Path, via_shell: bool = False, **env_changes
) -> subprocess.CompletedProcess:
    """Runs `code` with the backend importable under `python`, pip-isolated. via_shell: a
    shell in between, so that the parent process is not a python."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "CENTERLOSS_TORCH_PYTHON")
    }
    env.update(
        PYTHONPATH=os.pathsep.join([str(isolation), str(BACKEND)]),
        PYTHONNOUSERSITE="1",
        **env_changes,
    )
    cmd = [python, "-c", code]
    if via_shell:
        cmd = ["/bin/sh", "-c", '"$0" -c "$1"; exit $?', python, code]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


FIND = (
    "import json, sys, centerloss_build as b\n"
    "hidden = __import__('importlib').util.find_spec('torch') is None\n"
    "facts = b.use_torch()\n"
    "import torch\n"
    "print(json.dumps(dict(facts, hidden=hidden, torch_file=torch.__file__,\n"
    "                      last=sys.path[-1])))"
)


def test_isolated_build_finds_this_environments_torch_behind_the_build_tools(isolation):
    run = _backend(sys.executable, FIND, isolation)
    assert run.returncode == 0, run.stderr
    facts = json.loads(run.stdout)
    assert facts["hidden"], "the emulated isolation must hide torch"
    assert facts["torch_version"] == TORCH_DIST_VERSION
    assert Path(facts["torch_root"]) == TORCH_ROOT == Path(facts["last"])
    assert Path(facts["torch_file"]).parent.parent == TORCH_ROOT
    assert facts["how"] == "the interpreter running this build"
    # reported on stderr (pip -v shows it): the torch and the interpreter
    assert f"building against torch {TORCH_DIST_VERSION} in {TORCH_ROOT}" in run.stderr
    assert sys.executable in run.stderr


def test_frontend_with_its_own_interpreter_falls_back_to_the_parent_python(isolation, bare_python):
    # python -m build / pip's venv isolation: the backend runs under a torch-less
    # interpreter started by the user's python.
    run = _backend(bare_python, FIND, isolation)
    assert run.returncode == 0, run.stderr
    facts = json.loads(run.stdout)
    assert facts["how"] == "the python that started the build"
    assert Path(facts["torch_root"]) == TORCH_ROOT


def test_virtual_env_and_override_are_candidates(isolation, bare_python):
    prefix = Path(sys.executable).parent.parent
    run = _backend(bare_python, FIND, isolation, via_shell=True, VIRTUAL_ENV=str(prefix))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["how"] == "$VIRTUAL_ENV"
    # the override takes an environment folder or a python, and wins over everything
    for value in (str(prefix), sys.executable):
        run = _backend(bare_python, FIND, isolation, via_shell=True, CENTERLOSS_TORCH_PYTHON=value)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["how"] == "$CENTERLOSS_TORCH_PYTHON"


def test_no_torch_stops_at_once_naming_where_it_looked(isolation, bare_python):
    hook = "import centerloss_build as b; b.get_requires_for_build_wheel()"
    run = _backend(bare_python, hook, isolation, via_shell=True)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr  # one message, no traceback
    assert "no PyTorch found to build against. Install torch first" in lines[0]
    bare_env = Path(bare_python).parent.parent
    assert f"{bare_env} (the interpreter running this build: {bare_python}): no torch" in lines[0]
    assert "CENTERLOSS_TORCH_PYTHON=" in lines[0]
    # an override is the only candidate: no fallback to the torch the parent has
    run = _backend(sys.executable, hook, isolation, CENTERLOSS_TORCH_PYTHON=bare_python)
    assert run.returncode == 1
    assert f"{bare_env} ($CENTERLOSS_TORCH_PYTHON: {bare_python}): no torch" in run.stderr


def test_pips_own_isolated_build_never_falls_back_to_another_environment(isolation, bare_python):
    # pip in a torch-less environment runs the backend under its own python: that
    # environment is the target, even with another (torch) environment activated.
    hook = "import centerloss_build as b; b.get_requires_for_build_wheel()"
    as_pip = (
        "import subprocess, sys\n"
        f"sys.exit(subprocess.run([sys.executable, '-c', {hook!r}]).returncode)"
    )
    run = _backend(
        bare_python, as_pip, isolation, VIRTUAL_ENV=str(Path(sys.executable).parent.parent)
    )
    assert run.returncode == 1
    assert "no PyTorch found" in run.stderr and "the python that started the build" in run.stderr
    assert "$VIRTUAL_ENV" not in run.stderr


def test_a_torch_in_the_build_environment_itself_is_refused(isolation, tmp_path):
    # e.g. torch added to the build requirements: it would shadow the target's torch
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    code = f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n" + FIND
    run = _backend(sys.executable, code, isolation)
    assert run.returncode == 1
    assert (
        f"the build would import the torch in {tmp_path}, not the target environment's "
        f"torch {TORCH_DIST_VERSION} in {TORCH_ROOT}"
    ) in run.stderr


def test_build_requirements_add_only_ninja_and_metadata_has_the_groups(isolation, tmp_path):
    code = (
        "import json, centerloss_build as b\n"
        "req = b.get_requires_for_build_wheel()\n"
        f"meta = b.prepare_metadata_for_build_wheel({str(tmp_path)!r})\n"
        "print(json.dumps([req, meta]))"
    )
    run = _backend(sys.executable, code, isolation)
    assert run.returncode == 0, run.stderr
    requires, dist_info = json.loads(run.stdout.strip().splitlines()[-1])
    assert "ninja" in requires and not any(r.startswith("torch") for r in requires)
    metadata = (tmp_path / dist_info / "METADATA").read_text()
    for group, packages in {
        "bench": ["tqdm", "matplotlib"],
        "train": ["torchvision", "scikit-learn", "pillow", "tqdm"],
        "test": ["pytest", "hypothesis", "tqdm", "torchvision"],
    }.items():
        assert f"Provides-Extra: {group}" in metadata
        for package in packages:
            assert f'Requires-Dist: {package}; extra == "{group}"' in metadata
    assert "Requires-Dist: torch>=2.4\n" in metadata


def _unbuilt_clone(where: Path, with_bench: bool = False) -> Path:
    """A fresh clone's layout: the package's Python files, nothing built."""
    pkg = where / "centerloss_ext"
    shutil.copytree(
        ROOT / "centerloss_ext",
        pkg,
        ignore=shutil.ignore_patterns("_C*", "_build_info.py", "__pycache__", "train"),
    )
    if with_bench:
        shutil.copytree(
            ROOT / "bench", where / "bench", ignore=shutil.ignore_patterns("__pycache__", "results")
        )
    return pkg


def _installed_env() -> dict:
    # the built copy this suite imports stands for the installed package
    return dict(os.environ, PYTHONPATH=str(INSTALLED.parent))


def test_unbuilt_source_folder_says_which_folder_and_where_the_installed_copy_is(tmp_path):
    clone_pkg = _unbuilt_clone(tmp_path)
    run = subprocess.run(
        [sys.executable, "-c", "import centerloss_ext"],
        cwd=tmp_path,
        env=_installed_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    message = run.stderr.strip().splitlines()[-1]
    assert f"imported from {clone_pkg}, an unbuilt source folder" in message
    assert f"not from the installed copy in {INSTALLED}" in message
    assert "run from another folder" in message and "pip install -e ." in message
    # from anywhere else, the installed copy is used
    run = subprocess.run(
        [sys.executable, "-c", "import centerloss_ext as c; print(c.__file__)"],
        cwd=tmp_path / "centerloss_ext",
        env=_installed_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and Path(run.stdout.strip()).parent == INSTALLED


def test_unbuilt_source_with_nothing_installed_says_how_to_install(tmp_path, monkeypatch):
    clone_pkg = _unbuilt_clone(tmp_path)
    monkeypatch.setattr(_loader, "HERE", str(clone_pkg))
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    message = _loader.not_built_message()
    assert message.startswith(f"centerloss_ext is not built: {clone_pkg} is its source")
    assert "pip install ." in message and "no built copy is installed" in message


def test_benchmark_script_in_a_clone_uses_the_installed_package(tmp_path):
    _unbuilt_clone(tmp_path, with_bench=True)
    out = tmp_path / "out"
    run = subprocess.run(
        [
            sys.executable,
            "bench/compare.py",
            "--device",
            "cpu",
            "--shapes",
            "32x2x3",
            "--variants",
            "centerloss_ext",
            "--no-compile",
            "--min-run-time",
            "0.01",
            "--budget",
            "20",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        env=_installed_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    facts = json.loads((out / "compare.json").read_text())["machine"]["centerloss_ext"]
    assert Path(facts["location"]).parent == INSTALLED


@pytest.mark.parametrize("hidden", [("tqdm",), ("matplotlib", "tqdm")])
def test_benchmark_names_its_dependency_group_before_any_work(tmp_path, hidden):
    out = tmp_path / "out"
    code = (
        "import runpy, sys\n"
        f"for name in {hidden!r}: sys.modules[name] = None  # not installed\n"
        f"sys.argv = ['bench/compare.py', '--quick', '--out', {str(out)!r}]\n"
        "runpy.run_path('bench/compare.py', run_name='__main__')"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert '"bench" group: pip install ".[bench]"' in lines[0]
    assert lines[0].endswith(
        "pip install " + " ".join(n for n in ("tqdm", "matplotlib") if n in hidden)
    )
    assert not out.exists() and run.stdout == ""
