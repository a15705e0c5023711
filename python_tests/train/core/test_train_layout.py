"""The training application's shape (issue 22), checked so it stays true: one folder per
job and a shared core; among the training modules only the jobs' command lines parse
arguments, and no library function takes an argparse Namespace; no function takes more
than 8 parameters (a run's state travels as one context object); a job never imports
another job's command line; no module assigns another module's attributes; each job runs
as `python -m centerloss_ext.train.<job>` and checks the optional packages before
anything imports them."""

from __future__ import annotations

import ast

import pytest

from helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "centerloss_ext"
TRAIN = PACKAGE / "train"
JOBS = ("mnist", "faces", "openset")
# faces/synthetic.py: a test-data helper with a command line of its own
COMMAND_LINES = {"mnist/cli.py", "faces/cli.py", "openset/cli.py", "faces/synthetic.py"}
# the functions that turn a parsed command line into the jobs' parameters
TAKE_NAMESPACE = {
    ("faces/cli.py", "run"),
    ("faces/cli.py", "_runtime"),
    ("faces/synthetic.py", "main"),
}
MAX_PARAMETERS = 8


def _modules():
    for path in sorted(TRAIN.rglob("*.py")):
        yield path.relative_to(TRAIN).as_posix(), ast.parse(path.read_text())


def test_one_folder_per_job_and_a_core():
    for folder in ("core", *JOBS):
        assert (TRAIN / folder / "__init__.py").is_file(), folder
    for job in JOBS:
        assert (TRAIN / job / "__main__.py").is_file() and (TRAIN / job / "cli.py").is_file()
    flat = sorted(p.name for p in TRAIN.glob("*.py"))
    assert flat == ["__init__.py", "synthetic.py"], flat  # synthetic: the old command


def test_only_the_command_lines_parse_arguments():
    for name, tree in _modules():
        parses = any(
            isinstance(node, ast.Attribute)
            and node.attr in ("ArgumentParser", "parse_args", "add_subparsers")
            for node in ast.walk(tree)
        )
        assert parses == (name in COMMAND_LINES), name
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and (name, node.name) not in TAKE_NAMESPACE:
                for arg in node.args.args + node.args.kwonlyargs:
                    annotation = ast.unparse(arg.annotation) if arg.annotation else ""
                    assert "Namespace" not in annotation and arg.arg != "args", (
                        f"{name}: {node.name}({arg.arg})"
                    )


def test_no_function_takes_more_than_8_parameters():
    """self and cls not counted; constructors (and so dataclasses) exempt."""
    long = []
    for name, tree in _modules():
        for node in ast.walk(tree):
            if (
                isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.name != "__init__"
            ):
                a = node.args
                params = [
                    p.arg
                    for p in a.posonlyargs + a.args + a.kwonlyargs
                    if p.arg not in ("self", "cls")
                ]
                n = len(params) + (a.vararg is not None) + (a.kwarg is not None)
                if n > MAX_PARAMETERS:
                    long.append(f"{name}: {node.name} takes {n}")
    assert not long


def _imports(name: str, tree: ast.AST):
    """The absolute names a module imports (relative imports resolved)."""
    package = ["centerloss_ext", "train", *name.split("/")[:-1]]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield module
            yield from (f"{module}.{a.name}" for a in node.names)


def test_a_job_never_imports_another_jobs_command_line():
    for name, tree in _modules():
        job = name.split("/")[0]
        for imported in _imports(name, tree):
            for other in JOBS:
                if other != job:
                    assert not imported.startswith(f"centerloss_ext.train.{other}.cli"), (
                        f"{name} imports {imported}"
                    )


def test_the_core_imports_no_job():
    for name, tree in _modules():
        if name.startswith("core/"):
            for imported in _imports(name, tree):
                assert not any(
                    imported.startswith(f"centerloss_ext.train.{job}") for job in JOBS
                ), f"{name} imports {imported}"


def test_no_module_assigns_another_modules_attributes():
    for name, tree in _modules():
        modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                modules |= {a.asname or a.name for a in node.names}
        for node in ast.walk(tree):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, (ast.AugAssign, ast.AnnAssign))
                else []
            )
            for target in targets:
                for t in target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]:
                    while isinstance(t, ast.Attribute) and isinstance(t.value, ast.Attribute):
                        t = t.value
                    assert not (
                        isinstance(t, ast.Attribute)
                        and isinstance(t.value, ast.Name)
                        and t.value.id in modules
                    ), f"{name}:{node.lineno}"
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "setattr"
                and node.args
                and isinstance(node.args[0], ast.Name)
                and node.args[0].id in modules
            ):
                raise AssertionError(f"{name}:{node.lineno}: setattr on a module")


@pytest.mark.parametrize(
    "path",
    [
        "mnist/cli.py",
        "faces/cli.py",
        "openset/cli.py",
        "mnist/__main__.py",
        "faces/__main__.py",
        "openset/__main__.py",
    ],
)
def test_the_optional_packages_are_checked_before_any_other_import(path):
    """The first statement after the docstring and __future__ imports imports the check,
    the next one calls it: nothing heavy is imported before."""
    body = [
        node
        for node in ast.parse((TRAIN / path).read_text()).body
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
        and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")
    ]
    first, second = body[0], body[1]
    assert (
        isinstance(first, ast.ImportFrom)
        and first.module == "core.cli"
        and first.names[0].name == "require"
    ), path
    assert isinstance(second, ast.Expr) and isinstance(second.value, ast.Call), path
    assert ast.unparse(second.value.func) in ("require", "_require_extras"), path
