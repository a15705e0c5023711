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


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_classes=0, feature_dim=2), "num_classes must be a positive int"),
    (dict(num_classes=3, feature_dim=-1), "feature_dim must be a positive int"),
    (dict(num_classes=3, feature_dim=2, alpha=2.0), "alpha must be a finite number"),
    (dict(num_classes=3, feature_dim=2, center_update="sgd"), "center_update must be"),
    (dict(num_classes=3, feature_dim=2, reduction="avg"), "reduction must be"),
])
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
# the shared checks; both CenterLoss flavours are built in module.py, on top.
ALLOWED_IMPORTS = {
    "_checks": set(),
    "ops": {"_checks", "_C"},
    "reference": {"_checks"},
    "distributed": {"_checks", "ops", "reference"},
    "module": {"_checks", "ops", "reference", "distributed"},
}


def _package_imports(name: str) -> set:
    """The centerloss_ext modules that ``name``.py imports at run time (``if
    TYPE_CHECKING:`` blocks left out), and "importlib" if it imports by name."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(cl.__file__).parent / f"{name}.py").read_text())
    found = set()

    def visit(node):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("centerloss"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names
                         if a.name.startswith("centerloss") or a.name == "importlib")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@pytest.mark.parametrize("name", ALLOWED_IMPORTS)
def test_import_graph(name):
    assert _package_imports(name) <= ALLOWED_IMPORTS[name]


def test_reference_module_is_the_reference_flavour_of_center_loss():
    crit = reference.CenterLoss(4, 3, alpha=0.5)
    assert isinstance(crit, CenterLoss)
    x, y = torch.randn(16, 3), torch.arange(16) % 4
    torch.testing.assert_close(crit(x, y), reference.center_loss(x, y, torch.zeros(4, 3)))
    torch.testing.assert_close(crit.centers,
                               reference.update_centers_(torch.zeros(4, 3), x, y, 0.5))


def test_reference_training_step_reads_the_labels_once(monkeypatch):
    calls = []
    check = reference.check_label_range
    monkeypatch.setattr(reference, "check_label_range",
                        lambda labels, n: calls.append(len(labels)) or check(labels, n))
    reference.CenterLoss(4, 3)(torch.randn(16, 3), torch.arange(16) % 4)
    assert calls == [16]
