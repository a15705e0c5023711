"""SPEC "Public Python API": CenterLoss in both center-update modes."""

from __future__ import annotations

import pytest
import torch

import centerloss_ext as cl
from centerloss_ext import CenterLoss, reference
from helpers import make_batch

MODULES = {"compiled": CenterLoss, "reference": reference.CenterLoss}


@pytest.mark.parametrize("impl", MODULES)
def test_alpha_mode_centers_are_a_buffer(impl):
    crit = MODULES[impl](10, 4)
    assert crit.centers.shape == (10, 4) and crit.centers.dtype == torch.float32
    assert not crit.centers.requires_grad
    assert list(crit.parameters()) == []
    assert "centers" in crit.state_dict()


@pytest.mark.parametrize("impl", MODULES)
def test_optimizer_mode_centers_are_a_parameter(impl):
    crit = MODULES[impl](10, 4, center_update="optimizer", dtype=torch.float64)
    assert isinstance(crit.centers, torch.nn.Parameter)
    assert [p is crit.centers for p in crit.parameters()] == [True]
    assert crit.centers.dtype == torch.float64
    assert "centers" in crit.state_dict()


@pytest.mark.parametrize("impl", MODULES)
def test_training_forward_updates_and_eval_does_not(device, impl):
    x, y, _ = make_batch(64, 4, 5, device=device)
    crit = MODULES[impl](5, 4, alpha=0.5, device=device)
    loss = crit(x, y)
    torch.testing.assert_close(loss, reference.center_loss(x, y, torch.zeros(5, 4, device=device)))
    expected = reference.update_centers_(torch.zeros(5, 4, device=device), x, y, 0.5)
    torch.testing.assert_close(crit.centers, expected)
    crit.eval()
    before = crit.centers.clone()
    crit(x, y)
    assert torch.equal(crit.centers, before)


def test_compiled_and_reference_modules_agree_over_steps(device):
    a = CenterLoss(7, 3, alpha=0.3, device=device)
    b = reference.CenterLoss(7, 3, alpha=0.3, device=device)
    for step in range(5):
        x, y, _ = make_batch(50, 3, 7, device=device, seed=step)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        la, lb = a(xa, y), b(xb, y)
        la.backward()
        lb.backward()
        torch.testing.assert_close(la, lb)
        torch.testing.assert_close(xa.grad, xb.grad)
        torch.testing.assert_close(a.centers, b.centers)


def test_optimizer_mode_learns_centers_with_sgd(device):
    torch.manual_seed(0)
    means = torch.randn(3, 2, device=device) * 5
    crit = CenterLoss(3, 2, center_update="optimizer", device=device)
    opt = torch.optim.SGD(crit.parameters(), lr=0.5)
    for _ in range(200):
        y = torch.randint(0, 3, (64,), device=device)
        x = means[y] + 0.1 * torch.randn(64, 2, device=device)
        opt.zero_grad()
        crit(x, y).backward()
        opt.step()
    torch.testing.assert_close(crit.centers.detach(), means, atol=0.1, rtol=0)


def test_optimizer_mode_forward_does_not_move_centers():
    crit = CenterLoss(3, 2, center_update="optimizer")
    crit(torch.randn(8, 2), torch.arange(8) % 3)
    assert torch.equal(crit.centers.detach(), torch.zeros(3, 2))


def test_16bit_features_with_float32_centers(device):
    crit = CenterLoss(4, 8, device=device)
    x = torch.randn(32, 8, device=device, dtype=torch.bfloat16, requires_grad=True)
    y = torch.arange(32, device=device) % 4
    loss = crit(x, y)
    assert loss.dtype == torch.float32 and crit.centers.dtype == torch.float32
    loss.backward()
    assert x.grad.dtype == torch.bfloat16


def test_state_dict_round_trip_between_modes():
    a = CenterLoss(4, 3)
    a(torch.randn(16, 3), torch.arange(16) % 4)
    b = CenterLoss(4, 3, center_update="optimizer")
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.centers.detach(), a.centers)


def test_reset_parameters():
    crit = CenterLoss(4, 3)
    crit(torch.randn(16, 3), torch.arange(16) % 4)
    crit.reset_parameters()
    assert torch.equal(crit.centers, torch.zeros(4, 3))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_classes=0, feature_dim=2), "num_classes must be a positive int"),
        (dict(num_classes=3, feature_dim=-1), "feature_dim must be a positive int"),
        (dict(num_classes=3, feature_dim=2, alpha=2.0), "alpha must be a finite number"),
        (dict(num_classes=3, feature_dim=2, center_update="sgd"), "center_update must be"),
        (dict(num_classes=3, feature_dim=2, reduction="avg"), "reduction must be"),
    ],
)
def test_constructor_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CenterLoss(**kwargs)


def test_repr_and_functional_exports():
    assert "num_classes=5, feature_dim=2" in repr(CenterLoss(5, 2))
    assert cl.__version__
    for name in ("center_loss", "update_centers_", "center_loss_and_update_"):
        assert callable(getattr(cl, name)) and callable(getattr(reference, name))


# --- how the package hangs together (issue 12) -----------------------------------------

# Which sibling modules each core module may import: the oracle depends on nothing but
# the shared checks and the nn.Module code both CenterLoss classes share (_module_base);
# each class sits beside its functions; the sync finds both through the table of
# implementations. _module_base's one edge up, to distributed, is a function-level import
# that only a synced step (or a given process group) runs.
ALLOWED_IMPORTS = {
    "_checks": set(),
    "ops": {"_checks", "_C"},
    "_module_base": {"_checks", "distributed"},
    "reference": {"_checks", "_module_base"},
    "module": {"_module_base", "ops", "reference"},
    "implementations": {"_module_base", "ops", "reference"},
    "distributed": {"_checks", "_module_base", "implementations"},
}
# The same, at import time only (module-level imports): no cycle, and a single process
# never loads the sync.
TOP_LEVEL_IMPORTS = {**ALLOWED_IMPORTS, "_module_base": {"_checks"}}


def _package_imports(name: str, top_level_only: bool = False) -> set:
    """The centerloss_ext modules that ``name``.py imports at run time (``if
    TYPE_CHECKING:`` blocks left out; with ``top_level_only``, function bodies too), and
    "importlib" if it imports by name."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(cl.__file__).parent / f"{name}.py").read_text())
    found = set()

    def visit(node):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if top_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("centerloss"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(
                a.name
                for a in node.names
                if a.name.startswith("centerloss") or a.name == "importlib"
            )
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@pytest.mark.parametrize("name", ALLOWED_IMPORTS)
def test_import_graph(name):
    assert _package_imports(name) <= ALLOWED_IMPORTS[name]
    assert _package_imports(name, top_level_only=True) <= TOP_LEVEL_IMPORTS[name]


def test_import_time_graph_has_no_cycle():
    import graphlib

    graph = {
        name: {m for m in _package_imports(name, top_level_only=True) if m in TOP_LEVEL_IMPORTS}
        for name in TOP_LEVEL_IMPORTS
    }
    tuple(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError


def _core_files():
    from pathlib import Path

    return sorted((Path(cl.__file__).parent).glob("*.py"))


def test_no_module_sets_attributes_of_another():
    """No ``other_module.name = value`` anywhere in the package (issue 22: reference.py's
    CenterLoss used to be set from module.py)."""
    import ast

    for path in _core_files():
        tree = ast.parse(path.read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                imported.update((a.asname or a.name).split(".")[0] for a in node.names)
        for node in ast.walk(tree):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, (ast.AugAssign, ast.AnnAssign))
                else []
            )
            for t in targets:
                if isinstance(t, ast.Attribute):
                    root = t.value
                    while isinstance(root, ast.Attribute):
                        root = root.value
                    assert not (isinstance(root, ast.Name) and root.id in imported), (
                        f"{path.name}:{t.lineno} sets {ast.unparse(t)}"
                    )
            if (
                isinstance(node, ast.Call)
                and ast.unparse(node.func) == "setattr"
                and isinstance(node.args[0], ast.Name)
            ):
                assert node.args[0].id not in imported, f"{path.name}:{node.lineno} setattr"


# the methods whose signatures autograd fixes (one argument per input of the op)
AUTOGRAD_METHODS = {"forward", "backward", "setup_context", "jvp", "vjp"}


def test_no_function_takes_more_than_8_parameters():
    """Constructors and autograd.Function methods aside (issue 22)."""
    import ast

    too_many = []
    for path in _core_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            a = node.args
            count = (
                len(a.posonlyargs)
                + len(a.args)
                + len(a.kwonlyargs)
                + (a.vararg is not None)
                + (a.kwarg is not None)
            )
            name = getattr(node, "name", "<lambda>")
            if count > 8 and name != "__init__" and name not in AUTOGRAD_METHODS:
                too_many.append(f"{path.name}:{node.lineno} {name} ({count})")
    assert not too_many


def test_single_process_never_imports_the_sync():
    """``import centerloss_ext`` and single-process steps of both CenterLoss classes, both
    modes, training and eval, leave centerloss_ext.distributed unloaded (issue 22)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys, torch
        import centerloss_ext
        from centerloss_ext import reference
        for cls in (centerloss_ext.CenterLoss, reference.CenterLoss):
            for mode in ("alpha", "optimizer"):
                crit = cls(4, 3, center_update=mode)
                x = torch.randn(8, 3, requires_grad=True)
                crit(x, torch.arange(8) % 4).backward()
                assert x.grad is not None
                crit.eval()
                crit(x, torch.arange(8) % 4)
                repr(crit), crit.process_group, crit.syncs_centers()
        loaded = sorted(m for m in sys.modules if m.startswith("centerloss_ext"))
        assert "centerloss_ext.distributed" not in sys.modules, loaded
        assert "centerloss_ext.implementations" not in sys.modules, loaded
        # still there on first use, as an attribute of the package
        assert centerloss_ext.distributed.all_gather_batch
        assert "centerloss_ext.distributed" in sys.modules
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_table_of_implementations_matches_the_classes():
    from centerloss_ext import implementations, module, ops

    assert implementations.IMPLEMENTATIONS[implementations.COMPILED] is ops
    assert implementations.IMPLEMENTATIONS[implementations.REFERENCE] is reference
    for cls in (CenterLoss, reference.CenterLoss):
        functions = implementations.IMPLEMENTATIONS[cls._impl]
        assert cls._center_loss is functions.center_loss
        assert cls._center_loss_and_update_ is functions.center_loss_and_update_
    assert module.ReferenceCenterLoss is reference.ReferenceCenterLoss is reference.CenterLoss


def test_reference_module_is_the_reference_flavour_of_center_loss():
    from centerloss_ext._module_base import CenterLossBase

    crit = reference.CenterLoss(4, 3, alpha=0.5)
    # siblings on one base (reference.py cannot import the compiled CenterLoss)
    assert isinstance(crit, CenterLossBase) and isinstance(CenterLoss(4, 3), CenterLossBase)
    x, y = torch.randn(16, 3), torch.arange(16) % 4
    torch.testing.assert_close(crit(x, y), reference.center_loss(x, y, torch.zeros(4, 3)))
    torch.testing.assert_close(
        crit.centers, reference.update_centers_(torch.zeros(4, 3), x, y, 0.5)
    )


def test_reference_training_step_reads_the_labels_once(monkeypatch):
    calls = []
    check = reference.check_label_range
    monkeypatch.setattr(
        reference,
        "check_label_range",
        lambda labels, n: calls.append(len(labels)) or check(labels, n),
    )
    reference.CenterLoss(4, 3)(torch.randn(16, 3), torch.arange(16) % 4)
    assert calls == [16]
