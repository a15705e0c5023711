"""The LeNet++ recipe options of centerloss-mnist (train/mnist/recipe.py): BatchNorm,
the one-cycle schedule (make demo's recipe), and optimizer-mode centers with the SGD rate
that matches the alpha rule."""

from __future__ import annotations

import pytest
import torch
from test_train_mnist import _run, interrupt_second_epoch

from centerloss_ext import CenterLoss
from centerloss_ext.train.mnist import recipe as mnist_recipe
from centerloss_ext.train.mnist import train as mnist_train
from centerloss_ext.train.mnist.model import LeNetPlusPlus
from helpers import idx_folder


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return idx_folder(tmp_path_factory.mktemp("idx"), train=128, test=60, compress_train=True)


def opts(**kw):
    return mnist_recipe.MnistOptions(**kw)


def test_batch_norm_model_keeps_the_plain_models_layer_numbers():
    plain, bn = LeNetPlusPlus(10, 2), LeNetPlusPlus(10, 2, batch_norm=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 6
    assert all(m.bias is None for m in bn.modules() if isinstance(m, torch.nn.Conv2d))
    # checkpoints of the paper's network load as before
    convs = [k for k, v in plain.state_dict().items() if v.dim() == 4]
    assert convs == [f"trunk.{i}.weight" for i in (0, 2, 5, 7, 10, 12)]
    f, logits = bn.eval()(torch.zeros(3, 1, 28, 28))
    assert f.shape == (3, 2) and logits.shape == (3, 10)


def test_onecycle_rises_then_falls_per_step():
    r = mnist_recipe.build(
        opts(lr_schedule="onecycle", lr=3e-3, epochs=2), 10, 8, torch.device("cpu")
    )
    lrs = []
    for _ in range(16):
        lrs.append(r.optimizers[0].param_groups[0]["lr"])
        r.optimizers[0].step()
        r.scheduler.step()
    peak = lrs.index(max(lrs))
    assert lrs[0] == pytest.approx(3e-3 / 25) and max(lrs) == pytest.approx(3e-3, rel=1e-3)
    assert 2 <= peak <= 5 and lrs[-1] < lrs[0]  # a quarter of 16 steps, then down
    assert mnist_recipe.lr_at(3e-3, "onecycle", 0, 2) is None
    assert "scheduler" in r.states() and "center_optimizer" not in r.states()


def test_default_center_lr_matches_the_alpha_rule_for_an_average_class():
    """B = 20, C = 4, five samples per class (the average count B/C): one SGD step at the
    default rate moves every center exactly as the alpha rule does."""
    b, c, d, alpha, lam = 20, 4, 3, 0.5, 0.1
    o = opts(batch_size=b, alpha=alpha, center_loss_weight=lam, center_update="optimizer")
    lr = mnist_recipe.center_lr(o, c)
    assert lr == pytest.approx(alpha * b * c / ((b + c) * lam))
    torch.manual_seed(0)
    x, y = torch.randn(b, d), torch.arange(b) % c
    start = torch.randn(c, d)
    by_alpha = CenterLoss(c, d, alpha=alpha)
    by_alpha.centers.copy_(start)
    by_alpha.train()(x, y)
    by_sgd = CenterLoss(c, d, center_update="optimizer")
    with torch.no_grad():
        by_sgd.centers.copy_(start)
    sgd = torch.optim.SGD(by_sgd.parameters(), lr=lr)
    (lam * by_sgd(x, y)).backward()
    sgd.step()
    torch.testing.assert_close(by_sgd.centers.detach(), by_alpha.centers)


def test_optimizer_mode_without_a_gradient_is_refused(idx_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _run(
            idx_dir,
            tmp_path / "o",
            "--center-update",
            "optimizer",
            "--center-loss-weight",
            "0",
            "--center-lr",
            "0.5",
        )  # a rate cannot help
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--center-update alpha" in err
    assert not (tmp_path / "o").exists()


def test_optimizer_mode_learns_the_centers_and_resumes(
    idx_dir,
    tmp_path,
    monkeypatch,
):
    """A run stopped by Ctrl-C after epoch 1 and resumed ends where the straight run
    does: the one-cycle schedule's and the centers' SGD states are in the checkpoint."""
    args = (
        "--epochs",
        "2",
        "--center-update",
        "optimizer",
        "--lr-schedule",
        "onecycle",
        "--batch-norm",
    )
    straight = _run(idx_dir, tmp_path / "a", *args)
    real = interrupt_second_epoch(monkeypatch)
    with pytest.raises(SystemExit):
        _run(idx_dir, tmp_path / "b", *args)
    monkeypatch.setattr(mnist_train, "train_epoch", real)
    resumed = _run(idx_dir, tmp_path / "b", "--resume", *args)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert {"center_optimizer", "scheduler"} <= set(a)
    assert a["center_loss"]["centers"].abs().sum() > 0  # SGD moved them
    torch.testing.assert_close(
        a["center_loss"]["centers"], b["center_loss"]["centers"], rtol=1e-5, atol=1e-6
    )
    assert resumed["final"]["train_loss"] == pytest.approx(
        straight["final"]["train_loss"], rel=1e-5
    )
    lrs = [h["lr"] for h in straight["history"]]
    assert lrs[0] == pytest.approx(1e-3 / 25)  # epoch 1 starts low
    with pytest.raises(SystemExit):  # 2 steps: too few
        _run(idx_dir, tmp_path / "c", "--epochs", "1", "--lr-schedule", "onecycle")


def test_bf16_trunk_computes_the_convolutions_in_bf16_and_the_rest_in_float32():
    torch.manual_seed(0)
    full = LeNetPlusPlus(10, 2, batch_norm=True).eval()
    half = LeNetPlusPlus(10, 2, batch_norm=True, trunk_dtype=torch.bfloat16).eval()
    half.load_state_dict(full.state_dict())
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen.setdefault(name, output.dtype)  # (returns None: output kept)

        return hook

    half.trunk.register_forward_hook(record("trunk"))
    half.embedding.register_forward_hook(record("features"))
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        f_half, logits = half(x)
        f_full, _ = full(x)
    assert seen == {"trunk": torch.bfloat16, "features": torch.float32}
    assert f_half.dtype == logits.dtype == torch.float32
    assert not torch.equal(f_half, f_full)  # it did round
    torch.testing.assert_close(f_half, f_full, rtol=0.05, atol=0.05 * float(f_full.abs().max()))
    # the backward reaches the convolutions' float32 weights
    loss = torch.nn.functional.cross_entropy(half.train()(x)[1], torch.arange(8))
    loss.backward()
    assert half.trunk[0].weight.grad.dtype == torch.float32
    assert half.trunk[0].weight.grad.abs().sum() > 0


def test_amp_auto_follows_the_hardware_and_bf16_is_refused_where_missing(monkeypatch):
    cpu = torch.device("cpu")
    assert mnist_recipe.resolve_amp("off", cpu) == "off"
    assert mnist_recipe.resolve_amp("bf16", cpu) == "bf16"
    for native, expected in ((True, "bf16"), (False, "off")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert mnist_recipe.resolve_amp("auto", cpu) == expected
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(mnist_recipe.TrainingError, match="--amp bf16: cuda:0 .*--amp off"):
        mnist_recipe.resolve_amp("bf16", torch.device("cuda:0"))
    with pytest.raises(ValueError, match="resolve_amp"):
        mnist_recipe.build(opts(amp="auto"), 10, 4, cpu)


def test_amp_run_records_bf16_and_resume_keeps_it(idx_dir, tmp_path, capsys):
    record = _run(idx_dir, tmp_path / "h", "--epochs", "1", "--amp", "bf16", "--batch-norm")
    assert record["config"]["amp"] == "bf16"
    assert record["final"]["train_loss"] == record["final"]["train_loss"]  # not NaN
    with pytest.raises(SystemExit) as e:
        _run(idx_dir, tmp_path / "h", "--epochs", "2", "--batch-norm", "--resume")
    assert e.value.code == 2
    assert "--amp 'bf16' (now 'off')" in capsys.readouterr().err
    resumed = _run(
        idx_dir, tmp_path / "h", "--epochs", "2", "--amp", "bf16", "--batch-norm", "--resume"
    )
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
