"""TableAdamW: dense mode is torch's AdamW, lazy mode equals it when every row is touched, and lazy mode's
decay of untouched rows and its update of a row touched again match hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdtune.model.mf import MF
from kdtune.train.fit import make_optimizer, scheduled_lr
from kdtune.train.optim import TableAdamW, gather_rows

LR, WD, B1, B2, EPS = 0.1, 0.5, 0.9, 0.999, 1e-8


def _table(seed: int = 0, rows: int = 5, dim: int = 3) -> nn.Parameter:
    return nn.Parameter(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)))


def _loss(table: torch.Tensor, idx: torch.Tensor, target: torch.Tensor, reader=gather_rows) -> torch.Tensor:
    """A loss whose gradient differs per row and per read (rows may repeat in ``idx``)."""
    return ((reader(table, idx) - target) ** 2 * torch.arange(1, idx.numel() + 1).unsqueeze(1)).sum()


def _plain(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return table.index_select(0, idx)


def _reads(step: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    idx = torch.cat([torch.arange(rows), torch.randint(rows, (4,), generator=gen)])  # every row, some twice
    return idx, torch.randn(idx.numel(), 3, generator=gen)


@pytest.mark.parametrize("lazy", [True, False])
def test_matches_dense_adamw_when_every_row_is_touched(lazy):
    ours, ref = _table(), _table()
    opt = TableAdamW([ours], lr=LR, weight_decay=WD, lazy=lazy)
    ref_opt = torch.optim.AdamW([ref], lr=LR, weight_decay=WD)
    for step in range(6):
        idx, target = _reads(step, ours.shape[0])
        opt.zero_grad()
        _loss(ours, idx, target).backward()
        opt.step()
        ref_opt.zero_grad()
        _loss(ref, idx, target, reader=_plain).backward()
        ref_opt.step()
        # mid-training reads see the decayed values even before sync
        with torch.no_grad():
            assert torch.allclose(gather_rows(ours, torch.arange(5)), ref, rtol=1e-5, atol=1e-6)
    opt.close()
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert ours.grad is None


def test_lazy_decay_of_an_untouched_row_matches_hand_computation():
    table = nn.Parameter(torch.tensor([[1.0], [2.0]]))
    opt = TableAdamW([table], lr=LR, weight_decay=WD)
    decay = 1 - LR * WD

    def step(rows: list[int], grad: float) -> None:
        opt.zero_grad()
        (gather_rows(table, torch.tensor(rows)).sum() * grad).backward()
        opt.step()

    # step 1 touches both rows with gradient 1: Adam's first step moves each by lr (m_hat/sqrt(v_hat) = 1)
    step([0, 1], 1.0)
    row1 = 2.0 * decay - LR * 1.0 / (1.0 + EPS)
    # steps 2..5 touch row 0 only: row 1 is only decayed, once per step
    for _ in range(4):
        step([0], 1.0)
    with torch.no_grad():
        assert gather_rows(table, torch.tensor([1])).item() == pytest.approx(row1 * decay**4, rel=1e-6)
    # step 6 touches row 1 with gradient -2: lazy Adam's moments only change on the steps a row is touched
    step([1], -2.0)
    m = B1 * (1 - B1) * 1.0 + (1 - B1) * -2.0
    v = B2 * (1 - B2) * 1.0 + (1 - B2) * 4.0
    m_hat, v_hat = m / (1 - B1**6), v / (1 - B2**6)
    expected = row1 * decay**5 - LR * m_hat / (math.sqrt(v_hat) + EPS)
    opt.sync()
    assert table[1].item() == pytest.approx(expected, rel=1e-6)


def test_repeated_reads_accumulate_and_dense_reads_are_refused():
    table = _table()
    opt = TableAdamW([table], lr=LR)
    idx = torch.tensor([2, 2, 4])
    opt.zero_grad()
    (gather_rows(table, idx).sum() + gather_rows(table, torch.tensor([2])).sum()).backward()
    rows, grad = opt.tables[0].rows_and_grad()
    assert sorted(rows.tolist()) == [2, 2, 2, 4] and torch.equal(grad, torch.ones(4, 3))
    opt.step()
    opt.zero_grad()
    table.sum().backward()  # read without gather_rows: the optimiser would miss this gradient
    with pytest.raises(RuntimeError, match="gather_rows"):
        opt.step()


def test_close_detaches_and_applies_the_pending_decay():
    table = _table()
    opt = TableAdamW([table], lr=LR, weight_decay=WD)
    before = table.detach().clone()
    opt.zero_grad()
    gather_rows(table, torch.tensor([0])).sum().backward()
    opt.step()
    opt.close()
    assert torch.allclose(table[1:], before[1:] * (1 - LR * WD))  # untouched rows: decay only
    gather_rows(table, torch.tensor([3])).sum().backward()  # a plain parameter again: dense gradient
    assert table.grad is not None and table.grad[3].sum() == 3
    with pytest.raises(ValueError, match="another"):
        TableAdamW([table], lr=LR), TableAdamW([table], lr=LR)


@pytest.mark.parametrize("optimizer", ["dense", "lazy"])
def test_make_optimizer_trains_mf_and_extra(optimizer):
    model = MF(6, 7, 4, seed=0)
    extra = nn.Linear(4, 4)
    opt = make_optimizer(model, extra, 0.05, 0.1, optimizer)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    w0 = extra.weight.detach().clone()
    users, items = torch.tensor([0, 1, 1]), torch.tensor([[0, 1], [2, 3], [4, 5]])
    for _ in range(3):
        opt.zero_grad()
        (model(users, items).sum() + extra(model.user_vectors(users)).pow(2).sum()).backward()
        opt.step()
    opt.close()
    assert not torch.equal(extra.weight, w0)
    touched = model.state_dict()["item_emb.weight"][:6]
    assert not torch.allclose(touched, start["item_emb.weight"][:6])
    # item 6 is never read: lazy only decays it; dense AdamW (zero gradient, zero moments) does the same
    assert torch.allclose(model.item_emb.weight[6], start["item_emb.weight"][6] * (1 - 0.05 * 0.1) ** 3)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer(model, None, 0.1, 0.0, "sgd")


def test_cosine_schedule():
    assert scheduled_lr(0.01, "constant", 7, 10) == 0.01
    assert scheduled_lr(0.01, "cosine", 1, 10) == pytest.approx(0.01)
    assert scheduled_lr(0.01, "cosine", 6, 10) == pytest.approx(0.005)
    assert scheduled_lr(0.01, "cosine", 10, 10) == pytest.approx(0.01 * 0.5 * (1 + math.cos(0.9 * math.pi)))
    with pytest.raises(ValueError, match="schedule"):
        scheduled_lr(0.01, "step", 1, 10)
