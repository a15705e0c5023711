"""Issue 12's shape rules for the Python package, checked so they stay true: no module
over 350 lines; among the training modules only the command lines parse arguments, and
no library function takes an argparse Namespace."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "centerloss_ext"
# synthetic: a test-data helper
COMMAND_LINES = {"faces.py", "mnist.py", "openset.py", "synthetic.py"}
# the functions that turn a parsed command line into the jobs' parameters
TAKE_NAMESPACE = {("faces.py", "run"), ("faces.py", "_runtime"), ("synthetic.py", "main")}


def test_no_module_over_350_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 350}
    assert not long


def test_only_the_command_lines_parse_arguments():
    for path in (PACKAGE / "train").glob("*.py"):
        tree = ast.parse(path.read_text())
        parses = any(isinstance(node, ast.Attribute) and node.attr in
                     ("ArgumentParser", "parse_args", "add_subparsers")
                     for node in ast.walk(tree))
        assert parses == (path.name in COMMAND_LINES), path.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.FunctionDef)
                    and (path.name, node.name) not in TAKE_NAMESPACE):
                for arg in node.args.args + node.args.kwonlyargs:
                    annotation = ast.unparse(arg.annotation) if arg.annotation else ""
                    assert "Namespace" not in annotation and arg.arg != "args", \
                        f"{path.name}: {node.name}({arg.arg})"
