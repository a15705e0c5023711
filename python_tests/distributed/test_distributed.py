"""SPEC "Multi-process": under torch.distributed the alpha update uses the global batch, so
the centers are bit-identical on every rank and equal to a single process's update on
the concatenation of the ranks' batches (rank order); the loss and the feature gradient
stay local. Ranks run in spawned processes (distributed_workers.py) on gloo, and on NCCL
where there is a GPU; this process computes what a single process would get.

Spawning costs a few seconds a rank, so each spawn runs many checks, and the tests read
its results.
"""

from __future__ import annotations

from datetime import timedelta

import distributed_workers as W
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import centerloss_ext as cl
from centerloss_ext import distributed, implementations, reference

pytestmark = pytest.mark.skipif(
    not dist.is_available(), reason="torch.distributed is not available"
)

OPS = {"compiled": cl, "reference": reference}


def _spawn(tmp_path, scenario: str, world: int, backend: str = "gloo") -> list:
    mp.spawn(
        W.run_rank,
        nprocs=world,
        args=(world, str(tmp_path / "store"), scenario, str(tmp_path), backend),
    )
    return [torch.load(tmp_path / f"{scenario}.{r}.pt") for r in range(world)]


def _expected(steps, ranks, impl="compiled", dtype=torch.float32, device="cpu"):
    """A single process: per step, each rank's local loss and feature gradient (with the
    centers before the step), and the centers after the update on the concatenated batch."""
    ops = OPS[impl]
    centers = W.initial_centers(device)
    out = []
    for step, sizes in enumerate(steps):
        batches = [W.batch(step, r, sizes[r], dtype, device) for r in ranks]
        local = {}
        for r, (x, y) in zip(ranks, batches):
            x = x.clone().requires_grad_()
            loss = ops.center_loss(x, y, centers)
            loss.backward()
            local[r] = (loss.detach().cpu(), x.grad.cpu())
        ops.update_centers_(
            centers,
            torch.cat([x for x, _ in batches]),
            torch.cat([y.long() for _, y in batches]),
            W.ALPHA,
            deterministic=True,
        )
        out.append((local, centers.cpu().clone()))
    return out


def _check(results, expected, ranks, key, first_step=0):
    for i, (local, centers) in enumerate(expected[first_step:]):
        step = first_step + i
        for r in ranks:
            got = results[r][key][i]
            assert torch.equal(got["centers"], centers), f"{key}: step {step}, rank {r}"
            torch.testing.assert_close(got["loss"], local[r][0], equal_nan=True)
            torch.testing.assert_close(got["grad"], local[r][1], equal_nan=True)


# --- two ranks on gloo -----------------------------------------------------------------


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    return _spawn(tmp_path_factory.mktemp("world2"), "main2", 2)


@pytest.mark.parametrize("impl", OPS)
def test_two_ranks_match_single_process_on_concatenated_batch(world2, impl):
    # steps: equal sizes, unequal, an empty rank, all empty, int32 labels, strided
    # features, a NaN row
    _check(world2, _expected(W.STEPS[2], (0, 1), impl), (0, 1), f"steps/{impl}")


def test_two_ranks_16bit_features(world2):
    _check(world2, _expected(W.STEPS[2][:3], (0, 1), dtype=torch.float16), (0, 1), "half")


def test_sync_false_keeps_centers_local(world2):
    assert world2[0]["nosync/syncs"] == (True, False)
    for r in (0, 1):
        centers = W.initial_centers()
        for step, sizes in enumerate(W.STEPS[2][:2]):
            cl.update_centers_(centers, *W.batch(step, r, sizes[r]), W.ALPHA)
            assert torch.equal(world2[r]["nosync"][step]["centers"], centers)
    assert not torch.equal(world2[0]["nosync"][-1]["centers"], world2[1]["nosync"][-1]["centers"])


def test_bad_input_on_one_rank_raises_on_every_rank_and_moves_nothing(world2):
    r0, r1 = world2[0]["errors"], world2[1]["errors"]
    for res in (r0, r1):
        assert all(res[f"{case}/untouched"] for case in ("label", "dtype", "width"))
    # rank 1 has label C: its own message there, a pointer to it elsewhere
    assert r1["label"][0] == "IndexError" and f"[0, {W.C})" in r1["label"][1]
    assert r0["label"][0] == "RuntimeError" and "rank(s) [1]" in r0["label"][1]
    # float32 on rank 0, float64 on rank 1
    for res in (r0, r1):
        assert res["dtype"][0] == "ValueError" and "same width and dtype" in res["dtype"][1]
    # a wrong width on rank 0 only: its own message there, a pointer to it elsewhere
    assert r0["width"][0] == "ValueError" and "feature_dim" in r0["width"][1]
    assert r1["width"][0] == "RuntimeError" and "rank(s) [0]" in r1["width"][1]
    # and the group still works
    expected = cl.update_centers_(
        W.initial_centers(), *map(torch.cat, zip(W.batch(0, 0, 4), W.batch(0, 1, 4))), W.ALPHA
    )
    assert torch.equal(r0["after"], expected) and torch.equal(r1["after"], expected)


def test_checkpoint_saved_by_rank0_resumes_identically_everywhere(world2):
    _check(world2, _expected(W.STEPS[2][:4], (0, 1)), (0, 1), "checkpoint", first_step=2)


def test_first_synced_step_gives_every_rank_rank0s_centers(world2):
    steps = W.STEPS[2][:2]
    _check(world2, _expected(steps[:1], (0, 1)), (0, 1), "divergent")
    centers = torch.zeros(W.C, W.D)  # what rank 0 loaded
    cl.update_centers_(
        centers,
        *map(torch.cat, zip(W.batch(1, 0, steps[1][0]), W.batch(1, 1, steps[1][1]))),
        W.ALPHA,
    )
    for r in (0, 1):
        assert torch.equal(world2[r]["divergent"][1]["centers"], centers)


def _single_process_net(center_update: str) -> dict:
    """What DDP over two ranks of 8 samples should match: one process, 16 samples."""
    torch.manual_seed(0)  # rank 0's initialisation, which DDP broadcasts
    net = W.Net(center_update)
    with torch.no_grad():
        net.crit.centers.normal_()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for step in range(3):
        xs, ys = zip(*(W.ddp_inputs(step, r) for r in (0, 1)))
        opt.zero_grad()
        net(torch.cat(xs), torch.cat([y.long() for y in ys])).backward()
        opt.step()
    return net.state_dict()


@pytest.mark.parametrize("center_update", ["optimizer", "alpha"])
def test_ddp_keeps_model_and_centers_in_sync(world2, center_update):
    ranks = [world2[r][f"ddp/{center_update}"] for r in (0, 1)]
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    for name, value in _single_process_net(center_update).items():
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-5, atol=1e-6)


# --- three ranks on gloo ---------------------------------------------------------------


@pytest.fixture(scope="module")
def world3(tmp_path_factory):
    return _spawn(tmp_path_factory.mktemp("world3"), "main3", 3)


@pytest.mark.parametrize("impl", OPS)
def test_three_ranks_match_single_process_on_concatenated_batch(world3, impl):
    _check(world3, _expected(W.STEPS[3], (0, 1, 2), impl), (0, 1, 2), f"steps/{impl}")


def test_all_gather_batch_concatenates_in_rank_order(world3):
    xs, ys = zip(*(W.batch(0, r, n, torch.bfloat16) for r, n in enumerate((3, 0, 5))))
    for r in range(3):
        x, y = world3[r]["gather"]
        assert x.dtype == torch.bfloat16 and y.dtype == torch.int64
        assert torch.equal(x, torch.cat(xs)) and torch.equal(y, torch.cat(ys))


def test_process_group_limits_the_sync_to_its_ranks(world3):
    steps = [(4, None, 3), (0, None, 5)]
    _check(world3, _expected(steps, (0, 2)), (0, 2), "subgroup")
    assert "subgroup" not in world3[1]


# --- torch.compile under sync ------------------------------------------------------------


@pytest.mark.slow
def test_compiled_module_syncs_without_graph_break(tmp_path):
    results = _spawn(tmp_path, "compiled2", 2)
    for backend in ("aot_eager", "inductor"):
        _check(results, _expected(W.STEPS[2][:3], (0, 1)), (0, 1), backend)


@pytest.fixture
def world_of_one(tmp_path):
    """This process as the only rank of a gloo group, for checks that need no peer."""
    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp_path / 'store'}",
        rank=0,
        world_size=1,
        timeout=timedelta(seconds=30),
    )
    yield
    dist.destroy_process_group()
    torch._dynamo.reset()  # no compiled graph that assumed a group outlives it


def test_world_of_one_traces_fullgraph_and_updates_like_one_process(world_of_one):
    torch._dynamo.reset()
    crit = cl.CenterLoss(W.C, W.D)
    assert crit.syncs_centers()
    x, y = W.batch(0, 0, 12)
    explanation = torch._dynamo.explain(crit)(x, y)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    crit.reset_parameters()
    crit(x, y)
    assert torch.equal(crit.centers, cl.update_centers_(torch.zeros(W.C, W.D), x, y, W.ALPHA))


# the number by which the synced update op picks the update (its static table)
IMPL_CODES = {"compiled": implementations.COMPILED, "reference": implementations.REFERENCE}


@pytest.mark.parametrize("impl", OPS)
def test_opcheck_sync_ops(world_of_one, impl):
    x, y = W.batch(0, 0, 9, torch.float16)
    centers = W.initial_centers()
    torch.library.opcheck(
        distributed.sync_update_op, (centers, x, y.int(), W.ALPHA, 0, IMPL_CODES[impl])
    )
    torch.library.opcheck(distributed.broadcast_op, (centers, 0))


def test_sync_op_schema_names_no_module():
    schema = str(torch.ops.centerloss.sync_update_.default._schema)
    assert "str" not in schema and "int impl" in schema, schema


def test_synced_step_reads_the_labels_once(world_of_one, monkeypatch):
    # the loss checks this rank's labels before the exchange; the update of the gathered
    # batch (made of labels every rank checked) does not read them again
    calls = []
    check = reference.check_label_range
    monkeypatch.setattr(
        reference,
        "check_label_range",
        lambda labels, n: calls.append(len(labels)) or check(labels, n),
    )
    crit = W.IMPLS["reference"](W.C, W.D, alpha=W.ALPHA)
    assert crit.syncs_centers()
    x, y = W.batch(0, 0, 12)
    crit(x, y)
    assert calls == [12]
    assert torch.equal(
        crit.centers, reference.update_centers_(torch.zeros(W.C, W.D), x, y, W.ALPHA)
    )
    y[3] = W.C  # a bad label still raises, with the checked message, and moves nothing
    before = crit.centers.clone()
    with pytest.raises(IndexError, match=rf"\[0, {W.C}\)"):
        crit(x, y)
    assert torch.equal(crit.centers, before)


# --- without torch.distributed -----------------------------------------------------------


def test_no_sync_when_not_initialised():
    assert not dist.is_initialized()
    crit = cl.CenterLoss(3, 2)
    assert not crit.syncs_centers() and crit.process_group is None
    assert "sync" not in repr(crit) and "sync=False" in repr(cl.CenterLoss(3, 2, sync=False))


def test_process_group_must_be_a_process_group():
    with pytest.raises(TypeError, match="process_group"):
        cl.CenterLoss(3, 2, process_group="nccl")


# --- NCCL on GPUs --------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("world", [1, 2])
def test_nccl_ranks_match_single_process(tmp_path, world):
    if torch.cuda.device_count() < world:
        pytest.skip(f"needs {world} GPUs")
    if not dist.is_nccl_available():
        pytest.skip("torch was built without NCCL")
    results = _spawn(tmp_path, "nccl", world, backend="nccl")
    for impl in OPS:
        for dtype in (torch.float32, torch.bfloat16):
            expected = _expected(W.STEPS[world], range(world), impl, dtype, "cuda:0")
            _check(results, expected, range(world), f"{impl}/{dtype}")
