"""Losses: hand-computed values for every soft term and registered loss, gradient routing, registry."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from kdtune.data import Interactions
from kdtune.data.sampler import PositiveSet
from kdtune.losses import (
    LOSSES,
    DistillationExperts,
    KDContext,
    bpr_term,
    cd_term,
    de_tau,
    de_term,
    experts,
    get_loss,
    gumbel_mixture,
    mse_diff_term,
    per_user_uninteresting,
    rank_weights,
    rd_dynamic_weights,
    rd_term,
    rrd_term,
    sample_ranks,
    soft_bce_term,
    sorted_topn_of,
)
from kdtune.losses.draws import row_sample
from kdtune.losses.experts import _ExpertSet
from kdtune.model.mf import MF
from kdtune.train.fit import make_step
from kdtune.train.optim import TableAdamW

# Score tables [n_users=2, n_items=4] for the hand-computed cases.
S = [[2.0, 1.0, 0.0, -1.0], [0.5, -0.5, 1.5, 3.0]]
T_ = [[3.0, 0.5, 1.0, -2.0], [1.0, 2.0, -1.0, 0.0]]


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def table_mf(scores: list[list[float]]) -> MF:
    """An MF whose score(u, i) is exactly ``scores[u][i]``: one-hot users, items carry the score column."""
    n_users, n_items = len(scores), len(scores[0])
    m = MF(n_users, n_items, dim=n_users)
    with torch.no_grad():
        m.user_emb.weight.copy_(torch.eye(n_users))
        m.item_emb.weight.copy_(torch.tensor(scores).T)
    return m


def frozen(m: MF) -> MF:
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def hand_ctx(topn: list[list[int]] | None = None, extra=None, positives=None, **fields) -> KDContext:
    """Batch: user 0 (pos 0, neg 3), user 1 (pos 2, neg 1)."""
    return KDContext(
        student=table_mf(S),
        teacher=frozen(table_mf(T_)),
        topn=torch.tensor(topn if topn is not None else [[1, 2, 3], [0, 1, 3]]),
        users=torch.tensor([0, 1]),
        pos=torch.tensor([0, 2]),
        neg=torch.tensor([3, 1]),
        generator=torch.Generator().manual_seed(0),
        extra=extra,
        positives=positives,
        **fields,
    )


def pairs(users: list[int], items: list[int], n_users: int, n_items: int) -> Interactions:
    return Interactions.from_arrays(np.array(users), np.array(items), n_users, n_items)


def repeated_ctx(topn: list[list[int]]) -> KDContext:
    """Batch where user 0 has three triplets and user 1 one: (0,0,3) (0,0,1) (0,0,2) (1,2,1)."""
    ctx = hand_ctx(topn)
    ctx.users, ctx.pos, ctx.neg = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 2]), torch.tensor([3, 1, 2, 1])
    return ctx


# BPR over the four triplets of repeated_ctx: margins s(u, pos) - s(u, neg)
MARGINS4 = (S[0][0] - S[0][3], S[0][0] - S[0][1], S[0][0] - S[0][2], S[1][2] - S[1][1])
BPR4 = sum(math.log1p(math.exp(-d)) for d in MARGINS4) / 4


# pair margins of the hand batch
DS = [S[0][0] - S[0][3], S[1][2] - S[1][1]]  # [3.0, 2.0]
DT = [T_[0][0] - T_[0][3], T_[1][2] - T_[1][1]]  # [5.0, -3.0]
BPR = (math.log1p(math.exp(-3.0)) + math.log1p(math.exp(-2.0))) / 2


def close(x: torch.Tensor, y: float, tol: float = 1e-5) -> None:
    assert x.shape == ()
    x = x.detach()
    assert abs(x.item() - y) < tol, (x.item(), y)


# ----------------------------------------------------------------------------- plain terms


def test_bpr_term_hand():
    close(bpr_term(torch.tensor(DS)), BPR)
    close(bpr_term(torch.tensor([0.0])), math.log(2))
    assert torch.isfinite(bpr_term(torch.tensor([-1e4, 1e4])))  # softplus form does not overflow


def test_mse_diff_term_hand():
    # ((3-5)^2 + (2+3)^2) / 2 = 14.5, times T^2 = 4
    close(mse_diff_term(torch.tensor(DS), torch.tensor(DT), T=2.0), 4 * 14.5)


def test_soft_bce_term_hand():
    T = 2.0
    expected = 0.0
    for ds, dt in zip(DS, DT, strict=True):
        p, q = sig(dt / T), sig(ds / T)
        expected += -(p * math.log(q) + (1 - p) * math.log(1 - q))
    close(soft_bce_term(torch.tensor(DS), torch.tensor(DT), T), T * T * expected / 2)


def test_rank_weights_hand():
    w = rank_weights(3, 2.0)
    e = [math.exp(-1 / 2), math.exp(-2 / 2), math.exp(-3 / 2)]
    assert torch.allclose(w, torch.tensor([x / sum(e) for x in e]))


def test_rd_term_hand():
    w = [0.7, 0.3]
    s = [[1.0, -2.0], [0.0, 3.0]]
    expected = -(0.7 * math.log(sig(1.0)) + 0.3 * math.log(sig(-2.0)))
    expected += -(0.7 * math.log(sig(0.0)) + 0.3 * math.log(sig(3.0)))
    close(rd_term(torch.tensor(s), torch.tensor(w)), expected / 2)


def test_cd_term_hand():
    s, t, T = [[1.0, -1.0]], [[2.0, 0.0]], 4.0
    for shift in (0.0, -1.5):  # KDs' label sigmoid((t + t2) / t1)
        expected = 0.0
        for si, ti in zip(s[0], t[0], strict=True):
            y, q = sig((ti + shift) / T), sig(si)
            expected += -(y * math.log(q) + (1 - y) * math.log(1 - q))
        close(cd_term(torch.tensor(s), torch.tensor(t), T, shift), expected / 2)


def test_rd_dynamic_weights_hand():
    # 2 users, K = 3 teacher ranks, S = 4 sampled items, a catalogue of 9 items, mu = 0.5
    s_top = [[1.0, 0.0, -2.0], [5.0, 0.2, 0.1]]
    s_samples = [[0.5, 2.0, -1.0, -3.0], [0.3, 0.3, 0.0, 9.0]]
    mu, n_items = 0.5, 9
    expected = []
    for top, samples in zip(s_top, s_samples, strict=True):
        row = []
        for r, x in enumerate(top):
            rank_hat = math.floor((n_items - 1) * sum(y > x for y in samples) / len(samples))
            row.append(math.tanh(max(mu * (rank_hat - r), 0.0)))
        expected.append(row)
    # user 0: 1 above rank 0 -> rank_hat 2, tanh(1); 2 above rank 1 -> 4, tanh(1.5); 3 above rank 2 -> 6, tanh(2)
    assert expected[0] == [math.tanh(1.0), math.tanh(1.5), math.tanh(2.0)]
    # user 1: rank 0 is beaten by one sample (rank_hat 2), rank 2 by three (rank_hat 6)
    got = rd_dynamic_weights(torch.tensor(s_top), torch.tensor(s_samples), n_items, mu)
    assert torch.allclose(got, torch.tensor(expected))
    # an item the student ranks above the teacher's rank gets weight 0
    assert rd_dynamic_weights(torch.tensor([[0.0, 9.0]]), torch.tensor([[-1.0, 1.0]]), 9, 1.0)[0, 1] == 0


def rrd_by_hand(s_int: list[float], s_un: list[float]) -> float:
    below = sum(math.exp(x) for x in s_un)
    return -sum(s_int[k] - math.log(sum(math.exp(x) for x in s_int[k:]) + below) for k in range(len(s_int)))


def test_rrd_term_hand():
    s_int = [[2.0, 0.5, 1.0], [0.0, 0.0, -1.0]]
    s_un = [[-1.0, 0.3], [2.0, -3.0]]
    expected = (rrd_by_hand(s_int[0], s_un[0]) + rrd_by_hand(s_int[1], s_un[1])) / 2
    close(rrd_term(torch.tensor(s_int), torch.tensor(s_un)), expected)
    # stable for large logits (naive exp would overflow)
    assert torch.isfinite(rrd_term(torch.tensor([[500.0, 400.0]]), torch.tensor([[450.0]])))


def test_rrd_term_gradient_is_the_formulas():
    """The closed-form gradient equals autograd's through the definition (a cumulative log-sum-exp),
    with masked cells, a row without any valid cell, and logits hundreds apart."""
    torch.manual_seed(3)
    s_int = torch.randn(5, 4, dtype=torch.float64) * 3
    s_un = torch.randn(5, 6, dtype=torch.float64) * 3
    s_int[4] = torch.tensor([500.0, -300.0, 20.0, -900.0], dtype=torch.float64)
    valid = torch.rand(5, 6) > 0.3
    valid[1] = False
    for v in (None, valid):
        a, b = s_int.clone().requires_grad_(), s_un.clone().requires_grad_()
        masked = b if v is None else b.masked_fill(~v, float("-inf"))
        tail = torch.logcumsumexp(a.flip(1), dim=1).flip(1)
        below = torch.logsumexp(masked, dim=1, keepdim=True)
        ref = -(a - torch.logaddexp(tail, below)).sum(1).mean()
        want = torch.autograd.grad(2.5 * ref, [a, b])
        a2, b2 = s_int.clone().requires_grad_(), s_un.clone().requires_grad_()
        got = rrd_term(a2, b2, v)
        close(got, ref.item())
        for g, w in zip(torch.autograd.grad(2.5 * got, [a2, b2]), want, strict=True):
            assert torch.allclose(g, torch.nan_to_num(w), atol=1e-12)
    torch.autograd.gradcheck(
        lambda a, b: rrd_term(a, b, valid[:4]), (s_int[:4].requires_grad_(), s_un[:4].requires_grad_())
    )


def test_de_term_hand():
    pred = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    close(de_term(pred, target), (4.0 + 25.0) / 2)


# ----------------------------------------------------------------------------- sampling


def test_sample_ranks_without_replacement_sorted_and_rank_aware():
    g = torch.Generator().manual_seed(1)
    r = sample_ranks(20000, 6, 3, 2.0, g)
    assert r.shape == (20000, 3) and r.min() >= 0 and r.max() < 6
    assert (r[:, 1:] > r[:, :-1]).all()  # sorted and distinct -> without replacement
    # k=1 is a plain categorical draw: frequencies follow exp(-r/lam)
    one = sample_ranks(40000, 4, 1, 1.0, g).squeeze(1)
    freq = torch.bincount(one, minlength=4).float() / 40000
    assert torch.allclose(freq, rank_weights(4, 1.0), atol=0.01)
    # k == n takes every position
    assert (sample_ranks(5, 4, 4, 1.0, g) == torch.arange(4)).all()
    with pytest.raises(ValueError):
        sample_ranks(2, 3, 4, 1.0, g)




def test_sorted_topn_cache_follows_in_place_edits():
    topn = torch.tensor([[3, 1, 2], [0, 5, 4]])
    assert torch.equal(sorted_topn_of(topn), torch.tensor([[1, 2, 3], [0, 4, 5]]))
    topn[0, 0] = 9  # the loop could refresh the teacher's top-N in place
    assert torch.equal(sorted_topn_of(topn), torch.tensor([[1, 2, 9], [0, 4, 5]]))
    assert torch.equal(sorted_topn_of(topn.clone()), torch.tensor([[1, 2, 9], [0, 4, 5]]))


def test_gumbel_mixture_hand():
    logits = torch.tensor([[0.0, 5.0, -1.0], [2.0, 0.0, 0.0]])
    u = torch.rand(logits.shape, generator=torch.Generator().manual_seed(7))
    for tau in (1.0, 0.3):
        got = gumbel_mixture(logits, tau, torch.Generator().manual_seed(7))
        for m in range(2):
            logp = [x - math.log(sum(math.exp(y) for y in logits[m].tolist())) for x in logits[m].tolist()]
            z = [(lp - math.log(-math.log(float(uu)))) / tau for lp, uu in zip(logp, u[m], strict=True)]
            want = [math.exp(x) / sum(math.exp(y) for y in z) for x in z]
            assert torch.allclose(got[m], torch.tensor(want), atol=1e-6)
    # annealed to the reference's end temperature the rows are one-hot, and finite
    cold = gumbel_mixture(logits, 1e-10, torch.Generator().manual_seed(7))
    assert torch.isfinite(cold).all() and torch.equal(cold.max(1).values, torch.ones(2))


def test_de_tau_is_the_reference_annealing():
    # T_annealing(e, max_epoch, 1, 1e-10) = 1e-10 ** (e / max_epoch), e = epoch - 1 after the first epoch
    assert de_tau(0, 10, 1.0, 1e-10) == 1.0 and de_tau(1, 10, 1.0, 1e-10) == 1.0
    assert de_tau(6, 10, 1.0, 1e-10) == pytest.approx(1e-5)
    assert de_tau(3, 4, 2.0, 0.5) == pytest.approx(2.0 * 0.25 ** 0.5)
    assert de_tau(50, 10, 1.0, 1e-10) == 1e-10  # never below the end


# ----------------------------------------------------------------------------- registered losses, by hand


def test_bpr_loss_hand():
    close(get_loss("bpr").fn(hand_ctx(), alpha=0.9, T=3.0), BPR)


def test_mse_diff_loss_hand():
    a, T = 0.3, 2.0
    close(get_loss("mse_diff").fn(hand_ctx(), alpha=a, T=T), (1 - a) * BPR + a * 4 * 14.5)


def test_soft_bce_loss_hand():
    a, T = 0.4, 0.5
    soft = 0.0
    for ds, dt in zip(DS, DT, strict=True):
        p, q = sig(dt / T), sig(ds / T)
        soft += -(p * math.log(q) + (1 - p) * math.log(1 - q))
    close(get_loss("soft_bce").fn(hand_ctx(), alpha=a, T=T), (1 - a) * BPR + a * T * T * soft / 2)


def test_rd_loss_hand():
    a = 0.5
    # top-2 of user 0 = items 1, 2; of user 1 = items 0, 1; lambda = 1 -> w ∝ (e^-1, e^-2)
    w0, w1 = math.exp(-1) / (math.exp(-1) + math.exp(-2)), math.exp(-2) / (math.exp(-1) + math.exp(-2))
    u0 = -(w0 * math.log(sig(S[0][1])) + w1 * math.log(sig(S[0][2])))
    u1 = -(w0 * math.log(sig(S[1][0])) + w1 * math.log(sig(S[1][1])))
    close(
        get_loss("rd").fn(hand_ctx(), alpha=a, T=7.0, rd_k=2, rd_lambda=1.0),
        (1 - a) * BPR + a * (u0 + u1) / 2,
    )


def test_rd_loss_hybrid_weight_hand():
    """After rd_warmup epochs the static weights are multiplied by the dynamic ones, from the student's
    scores of uniform non-positive items drawn once per epoch for every user (rank_distill's hybrid)."""
    a, mu, n_dyn = 0.5, 0.7, 8
    positives = PositiveSet(pairs([0, 1], [0, 2], 2, 4))
    params = dict(rd_k=2, rd_lambda=1.0, rd_mu=mu, rd_dynamic_samples=n_dyn, rd_warmup=1)
    static = get_loss("rd").fn(hand_ctx(), alpha=a, **params)  # epoch 0 < rd_warmup: static only
    ctx = hand_ctx(positives=positives, draws={}, epoch=1)
    loss = get_loss("rd").fn(ctx, alpha=a, **params)
    samples = ctx.draws["epoch_draw"][1][0]
    assert samples.shape == (2, n_dyn) and 0 not in samples[0].tolist() and 2 not in samples[1].tolist()
    w_static = [math.exp(-1) / (math.exp(-1) + math.exp(-2)), math.exp(-2) / (math.exp(-1) + math.exp(-2))]
    soft = 0.0
    for u, top in ((0, [1, 2]), (1, [0, 1])):
        for r, i in enumerate(top):
            above = sum(S[u][j] > S[u][i] for j in samples[u].tolist())
            w = w_static[r] * math.tanh(max(mu * (math.floor(3 * above / n_dyn) - r), 0.0))
            soft += -w * math.log(sig(S[u][i]))
    close(loss, (1 - a) * BPR + a * soft / 2)
    assert not torch.allclose(loss, static)
    # a warm-up past the epoch keeps the static weights (the old definition)
    close(get_loss("rd").fn(hand_ctx(draws={}, epoch=1), alpha=a, **{**params, "rd_warmup": 2}), static.item())


def cd_by_hand(items: list[list[int]], T: float, shift: float = 0.0) -> float:
    """CD's BCE summed over users 0 and 1 and each one's items, soft labels sigmoid((t + shift) / T)."""
    total = 0.0
    for u in (0, 1):
        for i in items[u]:
            y, q = sig((T_[u][i] + shift) / T), sig(S[u][i])
            total += -(y * math.log(q) + (1 - y) * math.log(1 - q))
    return total


def test_cd_loss_hand():
    # cd_samples = N: sampling without replacement must take the whole top-N, so the value is fixed
    a, T = 0.6, 2.0
    topn = [[1, 2, 3], [0, 1, 3]]
    loss = get_loss("cd").fn(hand_ctx(topn), alpha=a, T=T, cd_samples=3, cd_lambda=1.0, cd_guide="teacher")
    close(loss, (1 - a) * BPR + a * cd_by_hand(topn, T) / 6)
    shifted = get_loss("cd").fn(hand_ctx(topn), alpha=a, T=T, cd_samples=3, cd_lambda=1.0, cd_guide="teacher",
                                cd_shift=-1.0)
    close(shifted, (1 - a) * BPR + a * cd_by_hand(topn, T, -1.0) / 6)


def test_cd_student_guide_hand():
    """Student-guided CD draws from the student's own current top-N (training positives left out), ranked
    again each epoch; cd_samples = N takes the whole of it."""
    a, T = 0.6, 2.0
    positives = PositiveSet(pairs([0, 1], [0, 2], 2, 4))
    ctx = hand_ctx(positives=positives, draws={}, epoch=0)
    loss = get_loss("cd").fn(ctx, alpha=a, T=T, cd_samples=3, cd_lambda=1.0, cd_guide="student")
    # student scores S: user 0's top-3 without item 0 is {1, 2, 3}; user 1's without item 2 is {3, 0, 1}
    close(loss, (1 - a) * BPR + a * cd_by_hand([[1, 2, 3], [3, 0, 1]], T) / 6)
    # each epoch ranks the student as it is then (no positives here: top-3 of the 4 items)
    ctx = hand_ctx(draws={}, epoch=0)
    get_loss("cd").fn(ctx, alpha=a, T=T, cd_samples=3, cd_lambda=1.0, cd_guide="student")
    assert [set(r) for r in ctx.draws["epoch_draw"][1][0].tolist()] == [{0, 1, 2}, {3, 2, 0}]
    with torch.no_grad():
        ctx.student.item_emb.weight[3, 0] = 9.0  # user 0's score of item 3
        ctx.student.item_emb.weight[0, 1] = -9.0  # user 1's score of item 0
    get_loss("cd").fn(ctx, alpha=a, T=T, cd_samples=3, cd_lambda=1.0, cd_guide="student")  # same epoch
    assert [set(r) for r in ctx.draws["epoch_draw"][1][0].tolist()] == [{0, 1, 2}, {3, 2, 0}]
    ctx.epoch = 1
    get_loss("cd").fn(ctx, alpha=a, T=T, cd_samples=3, cd_lambda=1.0, cd_guide="student")
    assert [set(r) for r in ctx.draws["epoch_draw"][1][0].tolist()] == [{3, 0, 1}, {3, 2, 1}]
    # hybrid: half (rounded up) of the items from the teacher's top-N, the rest from the student's
    topn = [[1, 2, 3], [0, 1, 3]]
    ctx = hand_ctx(topn, positives=positives, draws={}, epoch=0)
    get_loss("cd").fn(ctx, alpha=a, T=T, cd_samples=3, cd_lambda=1.0, cd_guide="hybrid")
    items = ctx.draws["epoch_draw"][1][0]
    assert items.shape == (2, 3)
    for u, student_top in ((0, [1, 2, 3]), (1, [3, 0, 1])):
        assert set(items[u, :2].tolist()) <= set(topn[u]) and len(set(items[u, :2].tolist())) == 2
        assert items[u, 2].item() in student_top
    with pytest.raises(ValueError, match="cd_guide"):
        get_loss("cd").fn(hand_ctx(topn), alpha=a, T=T, cd_samples=3, cd_guide="both")


@pytest.fixture
def pools(monkeypatch):
    """The shared uninteresting pools rrd draws (each batch's), recorded as the loss draws them."""
    from kdtune.losses import ranking as losses

    drawn = []
    real = losses.shared_uninteresting

    def record(*args, **kwargs):
        pool, valid = real(*args, **kwargs)
        drawn.append(pool.tolist())
        return pool, valid

    monkeypatch.setattr(losses, "shared_uninteresting", record)
    return drawn


def uninteresting_by_hand(u: int, pool: list[int], topn: list[list[int]]) -> list[float]:
    """User u's uninteresting scores: the pool's draws outside its top-N, repeats kept."""
    return [S[u][j] for j in pool if j not in topn[u]]


def test_rrd_loss_hand_per_user():
    # rrd_k = N takes the whole top-N in teacher order; one item is left outside it, which is each user's
    # whole complement: drawn without replacement it is the one uninteresting item, whatever rrd_l asks
    a = 0.5
    topn = [[1, 2, 3], [0, 1, 3]]
    u0 = rrd_by_hand([S[0][1], S[0][2], S[0][3]], [S[0][0]])
    u1 = rrd_by_hand([S[1][0], S[1][1], S[1][3]], [S[1][2]])
    for n_l in (1, 40):
        loss = get_loss("rrd").fn(hand_ctx(topn), alpha=a, T=9.0, rrd_k=3, rrd_l=n_l, rrd_lambda=1.0)
        close(loss, (1 - a) * BPR + a * (u0 + u1) / 2)


def test_rrd_users_estimates_the_term_on_a_subset_of_the_users():
    """With ``rrd_users=1`` a batch's RRD term is one of its two users' terms, each drawn with probability
    1/2 (their average is the full term)."""
    a = 0.5
    topn = [[1, 2, 3], [0, 1, 3]]
    u0 = rrd_by_hand([S[0][1], S[0][2], S[0][3]], [S[0][0]])
    u1 = rrd_by_hand([S[1][0], S[1][1], S[1][3]], [S[1][2]])
    allowed = {round(float((1 - a) * BPR + a * u), 4): i for i, u in enumerate((u0, u1))}
    counts = [0, 0]
    for seed in range(400):
        ctx = hand_ctx(topn)
        ctx.generator = torch.Generator().manual_seed(seed)
        loss = get_loss("rrd").fn(ctx, alpha=a, rrd_k=3, rrd_l=1, rrd_lambda=1.0, rrd_users=1).detach().item()
        counts[allowed[round(loss, 4)]] += 1
    # chi-square against 200 / 200 with one degree of freedom: 6.63 is its 0.99 quantile
    assert sum((c - 200) ** 2 / 200 for c in counts) < 6.63, counts
    # 0 and a cap at or above the batch's users are the full term
    for users in (0, 2, 5):
        loss = get_loss("rrd").fn(hand_ctx(topn), alpha=a, rrd_k=3, rrd_l=1, rrd_lambda=1.0, rrd_users=users)
        close(loss, (1 - a) * BPR + a * (u0 + u1) / 2)


def test_rrd_loss_hand_shared_pool(pools):
    # rrd_k = N takes the whole top-N in teacher order; one item is left outside it, so of the L draws
    # (shared by the batch's users) a user's uninteresting items are the draws of that item
    a = 0.5
    topn = [[1, 2, 3], [0, 1, 3]]
    loss = get_loss("rrd").fn(hand_ctx(topn), alpha=a, T=9.0, rrd_k=3, rrd_l=40, rrd_lambda=1.0, rrd_pool="shared")
    (pool,) = pools
    assert len(pool) == 40 and {0, 2} <= set(pool)  # 40 draws over 4 items: both users get some
    u0 = rrd_by_hand([S[0][1], S[0][2], S[0][3]], uninteresting_by_hand(0, pool, topn))
    u1 = rrd_by_hand([S[1][0], S[1][1], S[1][3]], uninteresting_by_hand(1, pool, topn))
    assert uninteresting_by_hand(0, pool, topn) == [S[0][0]] * pool.count(0)
    close(loss, (1 - a) * BPR + a * (u0 + u1) / 2)


def identity_experts(scale: float) -> DistillationExperts:
    """Two identical experts per side, x -> scale * relu(x) (dim 2): whichever the selection picks, the
    map is known."""
    extra = DistillationExperts(2, 2, n_experts=2)
    with torch.no_grad():
        for s in (extra.user, extra.item):
            s.w1.copy_(torch.eye(2).expand(2, 2, 2))
            s.w2.copy_(scale * torch.eye(2).expand(2, 2, 2))
            s.b1.zero_()
            s.b2.zero_()
    return extra


def test_de_loss_hand():
    # two identical experts x -> 2 relu(x): whichever the selection picks, the map is known
    a = 0.5
    extra = identity_experts(2.0)
    ctx = hand_ctx(extra=extra)
    # student users are one-hot -> experts give 2 e_u; the teacher's user embeddings are one-hot too
    user_term = ((2 - 1) ** 2 + 0 + 0 + (2 - 1) ** 2) / 2
    # items pos [0, 2], neg [3, 1]: student item i = (S[0][i], S[1][i]), teacher item i = (T_[0][i], T_[1][i])
    # the reference's item side: (mean over the distinct positives + mean over the distinct negatives) / 2
    def item_term(items: list[int]) -> float:
        return sum((T_[0][i] - 2 * max(S[0][i], 0.0)) ** 2 + (T_[1][i] - 2 * max(S[1][i], 0.0)) ** 2
                   for i in items) / len(items)

    loss = get_loss("de").fn(ctx, alpha=a, T=1.0, de_experts=2)
    close(loss, BPR + a * (user_term + 0.5 * (item_term([0, 2]) + item_term([3, 1]))), tol=1e-4)


def test_per_user_terms_count_each_distinct_user_once(pools):
    """User 0 has three triplets, user 1 one: BPR averages the 4 triplets, the soft term the 2 users.

    (Until the soft terms were per user, user 0's soft term counted 3 times: (3 u0 + u1) / 4.)
    """
    a = 0.5
    topn = [[1, 2, 3], [0, 1, 3]]
    w0, w1 = math.exp(-1) / (math.exp(-1) + math.exp(-2)), math.exp(-2) / (math.exp(-1) + math.exp(-2))
    u0 = -(w0 * math.log(sig(S[0][1])) + w1 * math.log(sig(S[0][2])))
    u1 = -(w0 * math.log(sig(S[1][0])) + w1 * math.log(sig(S[1][1])))
    rd = get_loss("rd").fn(repeated_ctx(topn), alpha=a, T=1.0, rd_k=2, rd_lambda=1.0)
    close(rd, (1 - a) * BPR4 + a * (u0 + u1) / 2)
    # rrd with rrd_k = N: the only item outside each top-N is uninteresting (no positives given)
    rrd = get_loss("rrd").fn(repeated_ctx(topn), alpha=a, T=1.0, rrd_k=3, rrd_l=20, rrd_lambda=1.0,
                             rrd_pool="shared")
    r0 = rrd_by_hand([S[0][1], S[0][2], S[0][3]], uninteresting_by_hand(0, pools[0], topn))
    r1 = rrd_by_hand([S[1][0], S[1][1], S[1][3]], uninteresting_by_hand(1, pools[0], topn))
    close(rrd, (1 - a) * BPR4 + a * (r0 + r1) / 2)
    # per user, each one's complement is its one uninteresting item
    rrd = get_loss("rrd").fn(repeated_ctx(topn), alpha=a, T=1.0, rrd_k=3, rrd_l=20, rrd_lambda=1.0)
    r0 = rrd_by_hand([S[0][1], S[0][2], S[0][3]], [S[0][0]])
    r1 = rrd_by_hand([S[1][0], S[1][1], S[1][3]], [S[1][2]])
    close(rrd, (1 - a) * BPR4 + a * (r0 + r1) / 2)
    # cd with cd_samples = N: user 0's three items and user 1's three, each user once
    T = 2.0
    cd = get_loss("cd").fn(repeated_ctx(topn), alpha=a, T=T, cd_samples=3, cd_lambda=1.0, cd_guide="teacher")
    close(cd, (1 - a) * BPR4 + a * cd_by_hand(topn, T) / 6)


def test_de_rrd_loss_hand():
    """DE-RRD: BPR + alpha (lambda_de DE + lambda_rrd RRD), each term as its own loss computes it."""
    a, l_de, l_rrd = 0.5, 0.7, 0.2
    topn = [[1, 2, 3], [0, 1, 3]]
    ctx = hand_ctx(topn, extra=identity_experts(2.0))
    loss = get_loss("de_rrd").fn(ctx, alpha=a, de_experts=2, rrd_k=3, rrd_l=1, rrd_lambda=1.0, lambda_de=l_de,
                                 lambda_rrd=l_rrd)
    # DE as in test_de_loss_hand: experts x -> 2 relu(x) on one-hot users, items pos [0, 2] and neg [3, 1]
    def item_term(items: list[int]) -> float:
        return sum((T_[0][i] - 2 * max(S[0][i], 0.0)) ** 2 + (T_[1][i] - 2 * max(S[1][i], 0.0)) ** 2
                   for i in items) / len(items)

    de = 1.0 + 0.5 * (item_term([0, 2]) + item_term([3, 1]))
    # RRD as in test_rrd_loss_hand_per_user: each user's complement is its one uninteresting item
    rrd = (rrd_by_hand([S[0][1], S[0][2], S[0][3]], [S[0][0]]) + rrd_by_hand([S[1][0], S[1][1], S[1][3]],
                                                                           [S[1][2]])) / 2
    close(loss, BPR + a * (l_de * de + l_rrd * rrd), tol=1e-4)


def test_de_items_are_the_distinct_items_of_the_batch():
    # identity experts (x -> relu(x), w2 = I): positives {0, 2} (item 0 three times), negatives {1, 2, 3}
    extra = identity_experts(1.0)
    ctx = repeated_ctx([[1, 2, 3], [0, 1, 3]])
    ctx.extra = extra
    user_term = (0 + 0) / 2  # one-hot student users map exactly onto one-hot teacher users
    err = [(T_[0][i] - max(S[0][i], 0.0)) ** 2 + (T_[1][i] - max(S[1][i], 0.0)) ** 2 for i in range(4)]
    item_term = 0.5 * ((err[0] + err[2]) / 2 + (err[1] + err[2] + err[3]) / 3)
    loss = get_loss("de").fn(ctx, alpha=0.5, T=1.0, de_experts=2)
    close(loss, BPR4 + 0.5 * (user_term + item_term), tol=1e-4)


def test_row_sample_draws_distinct_rows_uniformly():
    ids = torch.arange(10, 20)
    assert torch.equal(row_sample(ids, 0, torch.Generator().manual_seed(0)), ids)  # 0: every row
    assert torch.equal(row_sample(ids, 10, torch.Generator().manual_seed(0)), ids)  # no more rows than asked
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(30, dtype=torch.long)
    for _ in range(2000):
        pick = row_sample(ids, 3, g)
        assert len(pick) == 3 and len(set(pick.tolist())) == 3 and set(pick.tolist()) <= set(ids.tolist())
        counts += torch.bincount(pick, minlength=30)
    # each of the 10 rows is kept with probability 3/10: 600 of 2,000 draws; chi-square with 9 dof < 27.9 (p 0.001)
    observed = counts[10:20].double()
    assert float(((observed - 600) ** 2 / 600).sum()) < 27.9


def test_de_rows_estimates_the_term_on_a_subset_of_the_rows():
    """With ``de_rows=1`` each mean is one row's error: the DE term is one of the per-row terms of the full
    mean, and their average over draws is the full term."""
    ctx = repeated_ctx([[1, 2, 3], [0, 1, 3]])
    ctx.extra = identity_experts(1.0)
    full = get_loss("de").fn(ctx, alpha=0.5, T=1.0, de_experts=2)
    err = [(T_[0][i] - max(S[0][i], 0.0)) ** 2 + (T_[1][i] - max(S[1][i], 0.0)) ** 2 for i in range(4)]
    pos_terms, neg_terms = [err[0], err[2]], [err[1], err[2], err[3]]
    allowed = {round(BPR4 + 0.5 * 0.5 * (p + n), 4) for p in pos_terms for n in neg_terms}
    got = []
    for seed in range(60):
        ctx.generator = torch.Generator().manual_seed(seed)
        loss = get_loss("de").fn(ctx, alpha=0.5, T=1.0, de_experts=2, de_rows=1).detach().item()
        assert round(loss, 4) in allowed
        got.append(loss)
    assert len({round(v, 4) for v in got}) > 1
    close(torch.tensor(sum(got) / len(got)), full.detach(), tol=0.05 * full.item())


def test_rrd_hand_with_positives_excluded():
    """Given the training positives, user 0's only item outside its top-N is its positive (item 0): no
    uninteresting item is left, so its term is the listwise term of the interesting items alone."""
    a = 0.5
    topn = [[1, 2, 3], [0, 1, 3]]
    positives = PositiveSet(pairs([0, 1], [0, 2], 2, 4))
    u0 = rrd_by_hand([S[0][1], S[0][2], S[0][3]], [])
    # likewise user 1: its positive, item 2, is its only item outside the top-N
    u1 = rrd_by_hand([S[1][0], S[1][1], S[1][3]], [])
    for pool in ("per_user", "shared"):
        ctx = hand_ctx(topn, positives=positives)
        loss = get_loss("rrd").fn(ctx, alpha=a, rrd_k=3, rrd_l=4, rrd_lambda=1.0, rrd_pool=pool)
        close(loss, (1 - a) * BPR + a * (u0 + u1) / 2)
        loss.backward()  # a row without any uninteresting item keeps the gradient finite
        assert torch.isfinite(ctx.student.item_emb.weight.grad).all()


def test_rrd_term_valid_mask_hand():
    s_int, s_un = [[2.0, 0.5]], [[-1.0, 0.3, 9.0]]
    valid = torch.tensor([[True, True, False]])
    close(rrd_term(torch.tensor(s_int), torch.tensor(s_un), valid), rrd_by_hand(s_int[0], [-1.0, 0.3]))


def test_shared_uninteresting_pool_is_valid_only_outside_top_n_and_positives(monkeypatch):
    from kdtune.losses import draws as kd_sampling
    from kdtune.losses.draws import shared_uninteresting

    g = torch.Generator().manual_seed(5)
    n_users, n_items = 5, 30
    seen = {(u, (3 * u + j) % n_items) for u in range(n_users) for j in range(6)}
    positives = PositiveSet(pairs([u for u, _ in seen], [i for _, i in seen], n_users, n_items))
    topn = torch.stack([torch.tensor([(7 * u + j) % n_items for j in range(4)]) for u in range(n_users)])
    users = torch.tensor([0, 1, 3, 4])
    counts = torch.zeros(n_items)
    for i in range(200):
        if i == 100:  # the same answers from the sorted search used where a bitmap would be too large
            monkeypatch.setattr(kd_sampling, "MAX_BITMAP_CELLS", 10)
        pool, valid = shared_uninteresting(users, topn, n_items, 50, g, positives)
        assert pool.shape == (50,) and valid.shape == (4, 50)
        for r, u in enumerate(users.tolist()):
            for j, item in enumerate(pool.tolist()):
                excluded = (u, item) in seen or item in topn[u].tolist()
                assert bool(valid[r, j]) == (not excluded)
        counts += torch.bincount(pool, minlength=n_items)
    # the pool is uniform over the catalogue (10,000 draws, 333 expected per item)
    assert counts.min() > 250 and counts.max() < 420




def exclusions(n_users: int, n_items: int) -> tuple[PositiveSet, torch.Tensor, list[set[int]]]:
    """Positives and top-N of a small catalogue, and each user's complement (the items outside both)."""
    seen = {(u, (3 * u + j) % n_items) for u in range(n_users) for j in range(u + 1)}
    positives = PositiveSet(pairs([u for u, _ in seen], [i for _, i in seen], n_users, n_items))
    topn = torch.stack([torch.tensor([(5 * u + 1 + j) % n_items for j in range(3)]) for u in range(n_users)])
    complement = [set(range(n_items)) - {i for v, i in seen if v == u} - set(topn[u].tolist())
                  for u in range(n_users)]
    return positives, topn, complement


@pytest.mark.parametrize("search", [False, True])
def test_per_user_uninteresting_is_uniform_without_replacement_over_the_complement(search, monkeypatch):
    """Exact support (never a top-N item or a positive), no repeat within a row, every subset of the
    complement equally likely (chi-square over the C(6, 3) = 20 subsets, fixed seed), with the bitmap and
    with the sorted search used where a bitmap would be too large."""
    from itertools import combinations

    from kdtune.losses import draws

    if search:
        monkeypatch.setattr(draws, "MAX_BITMAP_CELLS", 10)
    n_items, n = 10, 3
    positives, topn, complement = exclusions(3, n_items)
    assert [len(c) for c in complement] == [6, 5, 4]
    rows = torch.tensor([0] * 6000 + [1, 2] * 50)  # a row per draw: user 0 six thousand times
    items, valid = per_user_uninteresting(rows, topn, n_items, n, torch.Generator().manual_seed(3), positives)
    assert items.shape == valid.shape == (6100, n) and bool(valid.all())
    for r, u in enumerate(rows.tolist()):
        row = items[r].tolist()
        assert set(row) <= complement[u] and len(set(row)) == n
    counts = {c: 0 for c in combinations(sorted(complement[0]), n)}
    for row in items[:6000].tolist():
        counts[tuple(sorted(row))] += 1
    expected = 6000 / len(counts)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 43.8  # the 99.9% quantile of chi-square with 19 degrees of freedom


def test_per_user_uninteresting_small_complement_is_all_of_it():
    # asking for more items than a user's complement holds: the whole complement, the rest marked invalid
    n_items = 10
    positives, topn, complement = exclusions(3, n_items)
    g = torch.Generator().manual_seed(0)
    for n in (4, 5, 8, 12):  # user 2's complement has 4 items, user 1's 5, user 0's 6
        items, valid = per_user_uninteresting(torch.tensor([0, 1, 2]), topn, n_items, n, g, positives)
        assert items.shape == (3, n)
        for u in range(3):
            kept = items[u][valid[u]].tolist()
            assert len(kept) == len(set(kept)) == min(n, len(complement[u])) and set(kept) <= complement[u]


@pytest.mark.parametrize("case", ["plain", "t_grad", "frozen_selector", "cold"])
def test_expert_mixture_matches_every_expert_under_autograd(case):
    """DE's two-GEMM mixture (hidden units scaled by their expert's weight) has the value and gradients
    (student rows, experts, selector, teacher rows) of running every expert under autograd and summing
    their outputs weighted by the Gumbel-softmax: ``mean_m ||t_m - sum_e w_me expert_e(s_m)||^2``."""
    torch.manual_seed(0)
    ex = _ExpertSet(3, 4, n_experts=5)
    if case == "frozen_selector":
        ex.selector.requires_grad_(False)
    tau = 1e-10 if case == "cold" else 0.7
    table = torch.randn(60, 3, requires_grad=True)  # the student's rows, read through a callable
    ids = torch.randperm(60)[:40]
    t = torch.randn(40, 4, requires_grad=case == "t_grad")
    got = ex(ids, lambda i: table.index_select(0, i), t, tau, torch.Generator().manual_seed(5))
    (1.7 * got).backward()
    params = [x for x in (table, t, *ex.parameters()) if x.requires_grad]
    got_grads = [x.grad.clone() for x in params]
    for x in params:
        x.grad = None
    w = gumbel_mixture(ex.selector(t), tau, torch.Generator().manual_seed(5))
    s = table.index_select(0, ids)
    every = torch.stack([torch.relu(s @ ex.w1[e] + ex.b1[e]) @ ex.w2[e] + ex.b2[e] for e in range(5)], 1)
    ref = de_term((w.unsqueeze(-1) * every).sum(1), t)
    assert torch.allclose(got, ref, atol=1e-5)
    (1.7 * ref).backward()
    for g, x in zip(got_grads, params, strict=True):
        assert torch.allclose(g, x.grad, atol=1e-5)
        assert torch.isfinite(g).all()
    if case == "plain":
        assert ex.selector.weight.grad.abs().sum() > 0
        assert all(ex.w2.grad[e].abs().sum() > 0 for e in range(5))  # a soft mixture trains every expert


@pytest.mark.parametrize("tau", [1.0, 0.1, 1e-2, 1e-3, 1e-10])
def test_sparse_expert_mixture_matches_the_dense_one(tau, monkeypatch):
    """Skipping the (row, expert) pairs of weight 0 keeps the DE term's value and every gradient (student
    rows, experts, selector: compared relative to its own size, which is tiny near one-hot) of the dense
    mixture, at any temperature; at a low one few pairs remain."""
    torch.manual_seed(1)
    ex = _ExpertSet(3, 4, n_experts=6)
    table = torch.randn(80, 3, requires_grad=True)
    ids = torch.randperm(80)[:50]
    t = torch.randn(50, 4)
    results, calls, original = {}, [], ex.sparse_mixture
    monkeypatch.setattr(ex, "sparse_mixture", lambda *a: calls.append(1) or original(*a))
    for share in (-1.0, 1.0):  # dense only; sparse whenever any pair is below the threshold
        monkeypatch.setattr(experts, "SPARSE_SHARE", share)
        calls.clear()
        value = ex(ids, lambda i: table.index_select(0, i), t, tau, torch.Generator().manual_seed(3))
        value.backward()
        grads = [x.grad.clone() for x in (table, *ex.parameters())]
        for x in (table, *ex.parameters()):
            x.grad = None
        results[share] = (value.detach(), grads, len(calls))
    (dense, dense_grads, dense_calls), (sparse, sparse_grads, sparse_calls) = results[-1.0], results[1.0]
    assert dense_calls == 0 and sparse_calls == 1
    assert torch.allclose(sparse, dense, rtol=1e-5, atol=1e-6)
    for a, b in zip(sparse_grads, dense_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()))
    w = gumbel_mixture(ex.selector(t), tau, torch.Generator().manual_seed(3))
    if tau <= 1e-3:  # nearly one-hot: a share of 0.3 takes the sparse path
        assert int((w > 0).sum()) <= 0.3 * w.numel()


def test_the_sparse_path_is_off_by_default_and_taken_only_when_few_pairs_matter(monkeypatch):
    ex = _ExpertSet(3, 4, n_experts=10)
    calls = []
    monkeypatch.setattr(ex, "sparse_mixture", lambda *a: calls.append(1) or torch.zeros(a[0].shape[0], 4))
    s = torch.randn(20, 3)
    ex.mixture(s, torch.eye(10).repeat(2, 1), tau=1e-3)  # one-hot, but the default keeps the dense path
    assert experts.SPARSE_SHARE == 0 and calls == []
    monkeypatch.setattr(experts, "SPARSE_SHARE", 0.3)
    ex.mixture(s, torch.full((20, 10), 0.1), tau=1.0)  # every pair matters: dense
    ex.mixture(s, torch.eye(10).repeat(2, 1), tau=None)  # no temperature given: dense
    assert calls == []
    ex.mixture(s, torch.eye(10).repeat(2, 1), tau=1e-3)  # one-hot: sparse
    assert calls == [1]


def test_make_step_hands_positives_and_epochs_to_the_loss():
    seen, budgets = [], []

    def spy(ctx, alpha=0.5):
        seen.append((ctx.positives, ctx.epoch, ctx.draws))
        budgets.append(ctx.epochs)
        return get_loss("bpr").fn(ctx)

    spec = LOSSES["bpr"].__class__("spy", spy, {}, False, "spy")
    model = MF(2, 4, 2, seed=0)
    positives = PositiveSet(pairs([0, 1], [0, 2], 2, 4))
    opt = TableAdamW(model.row_tables(), lr=0.1, lazy=False)
    step = make_step(model, spec, {}, opt, None, None, torch.Generator(), None, positives, batches_per_epoch=2,
                     epochs=7)
    for _ in range(5):
        step(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    opt.close()
    assert all(p is positives for p, _, _ in seen)
    assert [e for _, e, _ in seen] == [0, 0, 1, 1, 2]
    assert budgets == [7] * 5  # the run's epoch budget, for schedules (de's tau)
    assert all(d is seen[0][2] and isinstance(d, dict) for _, _, d in seen)  # one store for the run
    # without an epoch length, draws are per batch
    step = make_step(model, spec, {}, TableAdamW(model.row_tables(), lr=0.1, lazy=False), None, None,
                     torch.Generator(), None)
    step(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    assert seen[-1][2] is None


@pytest.mark.parametrize("name, option", [("cd", "teacher"), ("cd", "student"), ("rrd", "shared"),
                                          ("rrd", "per_user")])
def test_epoch_draws_are_kept_within_an_epoch_and_renewed_after(name, option, pools):
    d = get_loss(name)
    params = {**d.params, ("cd_guide" if name == "cd" else "rrd_pool"): option}
    ctx = random_ctx(name)
    ctx.draws, ctx.epoch = {}, 0
    first = d.fn(ctx, alpha=0.5, T=2.0, **params)
    table = ctx.draws["epoch_draw"][1]
    assert table[0].shape[0] == ctx.topn.shape[0]  # drawn for every user at once
    ctx.users = torch.tensor([1, 1, 5, 7])  # another batch of the same epoch: same draws
    ctx.pos, ctx.neg = torch.tensor([0, 3, 4, 9]), torch.tensor([2, 8, 11, 20])
    d.fn(ctx, alpha=0.5, T=2.0, **params)
    assert ctx.draws["epoch_draw"][1] is table
    # the value is the per-user definition on the users' rows of the table
    users = torch.tensor([1, 5, 7])
    items = table[0][users]
    s = ctx.student(users, items)
    bpr = bpr_term(ctx.student(ctx.users, ctx.pos) - ctx.student(ctx.users, ctx.neg))
    value = d.fn(ctx, alpha=0.5, T=2.0, **params)
    if option == "per_user":
        # both item sets come from the epoch's table
        soft = rrd_term(s, ctx.student(users, table[1][users]), table[2][users])
    elif name == "rrd":
        # the interesting items come from the epoch's table, the uninteresting ones from this batch's pool
        pool = torch.tensor(pools[-1])
        s_pool = ctx.student(users, pool.expand(3, -1))
        valid = torch.stack([~torch.isin(pool, sorted_topn_of(ctx.topn)[u]) for u in users])
        soft = rrd_term(s, s_pool, valid)
    else:
        soft = cd_term(s, table[1][users], 2.0)
    assert torch.allclose(value, 0.5 * bpr + 0.5 * soft, atol=1e-5)
    ctx.epoch = 1
    d.fn(ctx, alpha=0.5, T=2.0, **params)
    assert not torch.equal(ctx.draws["epoch_draw"][1][0], table[0])
    assert torch.isfinite(first)


def test_de_anneals_its_temperature_over_the_run(monkeypatch):
    from kdtune.losses import experts

    taus = []
    real = experts.gumbel_mixture

    def record(logits, tau, generator):
        taus.append(tau)
        return real(logits, tau, generator)

    monkeypatch.setattr(experts, "gumbel_mixture", record)
    for epoch in (0, 6):
        ctx = hand_ctx(extra=identity_experts(2.0), epoch=epoch, epochs=10)
        assert torch.isfinite(get_loss("de").fn(ctx, alpha=0.5, de_experts=2))
    assert taus[:3] == [1.0] * 3 and taus[3:] == [pytest.approx(1e-5)] * 3  # users, positives, negatives
    with pytest.raises(ValueError, match="de_tau_end"):
        get_loss("de").fn(hand_ctx(extra=identity_experts(2.0)), alpha=0.5, de_experts=2, de_tau_end=2.0)


@pytest.mark.parametrize("per_epoch", [False, True])
def test_rd_dynamic_weight_gradients_reach_student_only_and_deterministic(per_epoch):
    d = get_loss("rd")
    params = {**d.params, "rd_warmup": 0}
    values = []
    for _ in range(2):
        ctx = random_ctx("rd", teacher_requires_grad=True)
        if per_epoch:
            ctx.draws = {}
        loss = d.fn(ctx, alpha=0.7, **params)
        loss.backward()
        assert torch.isfinite(loss) and ctx.student.item_emb.weight.grad.abs().sum() > 0
        assert all(p.grad is None for p in ctx.teacher.parameters())
        values.append(loss.detach())
    assert torch.equal(values[0], values[1])
    static = d.fn(random_ctx("rd"), alpha=0.7, **d.params)
    assert not torch.equal(values[0], static)


def test_de_requires_matching_extra():
    with pytest.raises(ValueError, match="make_extra"):
        get_loss("de").fn(hand_ctx(), alpha=0.5)
    with pytest.raises(ValueError, match="de_experts"):
        get_loss("de").fn(hand_ctx(extra=DistillationExperts(2, 2, 3)), alpha=0.5, de_experts=5)


# ----------------------------------------------------------------------------- every registered loss


def random_ctx(name: str, teacher_requires_grad: bool = False, seed: int = 0) -> KDContext:
    torch.manual_seed(seed)
    n_users, n_items, n = 8, 30, 12
    student, teacher = MF(n_users, n_items, 3, seed=seed), MF(n_users, n_items, 5, seed=seed + 1)
    with torch.no_grad():  # nonzero biases so their gradients are exercised too
        for m in (student, teacher):
            m.item_bias.weight.normal_(0, 0.1)
            m.user_bias.weight.normal_(0, 0.1)
    teacher.eval()
    teacher.requires_grad_(teacher_requires_grad)
    topn = torch.stack([torch.randperm(n_items)[:n] for _ in range(n_users)])
    d = get_loss(name)
    extra = d.make_extra(3, 5, **d.params) if d.make_extra else None
    return KDContext(
        student=student,
        teacher=teacher,
        topn=topn,
        users=torch.randint(n_users, (16,)),
        pos=torch.randint(n_items, (16,)),
        neg=torch.randint(n_items, (16,)),
        generator=torch.Generator().manual_seed(seed),
        extra=extra,
    )


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_reach_student_only(name):
    d = get_loss(name)
    ctx = random_ctx(name, teacher_requires_grad=True)
    before = copy.deepcopy(ctx.teacher.state_dict())
    loss = d.fn(ctx, alpha=0.7, T=2.0, **d.params)
    assert torch.isfinite(loss) and loss.shape == ()
    loss.backward()
    assert ctx.student.user_emb.weight.grad.abs().sum() > 0
    assert ctx.student.item_emb.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in ctx.teacher.parameters())  # teacher terms were detached
    assert all(torch.equal(before[k], v) for k, v in ctx.teacher.state_dict().items())
    if ctx.extra is not None:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ctx.extra.parameters())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_frozen_teacher_finite_and_deterministic(name):
    d = get_loss(name)
    a = d.fn(random_ctx(name), alpha=0.5, T=3.0, **d.params)
    b = d.fn(random_ctx(name), alpha=0.5, T=3.0, **d.params)
    assert torch.isfinite(a) and torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_alpha_zero_is_bpr(name):
    d = get_loss(name)
    ctx = random_ctx(name)
    expected = get_loss("bpr").fn(ctx, alpha=0.0, T=1.0)
    assert torch.allclose(d.fn(ctx, alpha=0.0, T=2.5, **d.params), expected)


def test_registry():
    assert set(LOSSES) == {"bpr", "mse_diff", "soft_bce", "rd", "cd", "rrd", "de", "de_rrd", "listwise", "dcd",
                           "unkd", "htd", "catalog_kd"}
    assert get_loss("bpr").params == {}
    assert get_loss("rrd").params == {"rrd_k": 10, "rrd_l": 50, "rrd_lambda": 10.0, "rrd_pool": "per_user",
                                         "rrd_users": 0}
    # the references' defaults
    assert get_loss("de").params == {"de_experts": 30, "de_tau_start": 1.0, "de_tau_end": 1e-10, "de_rows": 0}
    assert {k: get_loss("rd").params[k] for k in ("rd_mu", "rd_dynamic_samples", "rd_warmup")} == {
        "rd_mu": 0.1, "rd_dynamic_samples": 100, "rd_warmup": 10}
    assert get_loss("cd").params["cd_guide"] == "student" and get_loss("cd").params["cd_shift"] == 0.0
    # mse_diff's T only rescales its term (a second weight): not a temperature
    assert {n for n, d in LOSSES.items() if d.uses_temperature} == {"soft_bce", "cd", "listwise", "catalog_kd"}
    assert sorted(n for n, d in LOSSES.items() if d.make_extra) == ["de", "de_rrd", "htd"]
    # the papers' BPR + alpha * KD form, and the KD weight lambda of BPR + lambda * KD as each loss's alpha
    assert sorted(n for n, d in LOSSES.items() if d.additive) == ["de", "de_rrd", "htd"]
    assert get_loss("de").alpha(0.25) == 0.25 and get_loss("rd").alpha(0.25) == pytest.approx(0.2)
    assert (get_loss("rd").weight_key, get_loss("cd").temperature_key) == ("rd_weight", "cd_T")
    assert get_loss("rrd").list_params == ("rrd_k",) and get_loss("de").list_params == ()
    for d in LOSSES.values():
        assert d.description
    with pytest.raises(ValueError, match="bpr.*cd.*de.*mse_diff.*rd.*rrd.*soft_bce"):
        get_loss("nope")
