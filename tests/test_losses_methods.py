"""The listwise, catalog_kd, dcd, unkd and htd losses: hand-computed terms, gradient routing, determinism, a short fit."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_losses import BPR, T_, S, close, hand_ctx, pairs, random_ctx, table_mf

from kdtune.data import split, synthetic
from kdtune.data.sampler import PositiveSet
from kdtune.losses import bpr_term, get_loss
from kdtune.losses.dcd import dcd_weights, draw_weighted, rank_cap, student_ranks
from kdtune.losses.htd import (
    SoftExperts,
    TopologyExperts,
    anneal_tau,
    group_assignment_term,
    topology_term,
    within_group_gap,
)
from kdtune.losses.listwise import CatalogKL, catalog_kd_loss, listwise_term
from kdtune.losses.unkd import (
    draw_pairs,
    group_lists,
    item_popularity,
    pairs_per_group,
    popularity_groups,
    unkd_term,
)
from kdtune.model.mf import MF
from kdtune.search.spacefile import parse_space
from kdtune.train.fit import distill, fit
from kdtune.train.teacher import compute_topn

METHODS = ["listwise", "catalog_kd", "dcd", "unkd", "htd"]

# Score tables [n_users=2, n_items=4] for the hand-computed cases.
# BPR of the hand batch: user 0 (pos 0, neg 3), user 1 (pos 2, neg 1)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))










def kl(p_logits: list[float], q_logits: list[float]) -> float:
    zp, zq = sum(math.exp(v) for v in p_logits), sum(math.exp(v) for v in q_logits)
    return sum(math.exp(a) / zp * (a - math.log(zp) - b + math.log(zq)) for a, b in zip(p_logits, q_logits,
                                                                                        strict=True))


# ----------------------------------------------------------------------------- listwise


def test_listwise_term_hand():
    T = 2.0
    s, t = [[1.0, 0.0, -1.0], [0.0, 2.0, 1.0]], [[2.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    expected = sum(kl([v / T for v in tr], [v / T for v in sr]) for sr, tr in zip(s, t, strict=True)) / 2
    close(listwise_term(torch.tensor(s), torch.tensor(t), T), T * T * expected)
    close(listwise_term(torch.tensor(t), torch.tensor(t), T), 0.0)  # a matching list costs nothing
    # a teacher probability that underflows stays finite
    assert torch.isfinite(listwise_term(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, -1e4]]), 1.0))


def test_listwise_loss_hand():
    # listwise_k=2: user 0 -> items 1, 2; user 1 -> items 0, 1 (its top-N rows)
    T, a = 2.0, 0.3
    soft = (kl([0.5 / T, 1.0 / T], [1.0 / T, 0.0 / T]) + kl([1.0 / T, 2.0 / T], [0.5 / T, -0.5 / T])) / 2
    value = get_loss("listwise").fn(hand_ctx(), alpha=a, T=T, listwise_k=2)
    close(value, (1 - a) * BPR + a * T * T * soft)
    with pytest.raises(ValueError, match="listwise_k"):
        get_loss("listwise").fn(hand_ctx(), alpha=a, T=T, listwise_k=4)


def test_catalog_kd_loss_hand():
    # every item but each user's training positive (user 0: item 0, user 1: item 2), both sides at T
    T, a = 0.5, 0.3
    positives = PositiveSet(pairs([0, 1], [0, 2], 2, 4))
    soft = (kl([v / T for v in T_[0][1:]], [v / T for v in S[0][1:]])
            + kl([T_[1][i] / T for i in (0, 1, 3)], [S[1][i] / T for i in (0, 1, 3)])) / 2
    close(catalog_kd_loss(hand_ctx(positives=positives), alpha=a, T=T), (1 - a) * BPR + a * T * T * soft)
    # without training positives, every item of the catalogue
    whole = (kl([v / T for v in T_[0]], [v / T for v in S[0]]) + kl([v / T for v in T_[1]], [v / T for v in S[1]])) / 2
    close(catalog_kd_loss(hand_ctx(), alpha=a, T=T), (1 - a) * BPR + a * T * T * whole)
    # one user per batch: the draw picks either user; the value is that user's term
    one = []
    for g in range(8):
        ctx = hand_ctx(positives=positives)
        ctx.generator.manual_seed(g)
        one.append(catalog_kd_loss(ctx, alpha=1.0, T=T, catalog_kd_users=1).item())
    per_user = [T * T * kl([v / T for v in T_[0][1:]], [v / T for v in S[0][1:]]),
                T * T * kl([T_[1][i] / T for i in (0, 1, 3)], [S[1][i] / T for i in (0, 1, 3)])]
    assert all(min(abs(v - p) for p in per_user) < 1e-5 for v in one) and len({round(v, 5) for v in one}) == 2
    with pytest.raises(ValueError, match="catalog_kd_users"):
        catalog_kd_loss(hand_ctx(), alpha=a, T=T, catalog_kd_users=0)


def test_catalog_kd_ignores_the_users_bias_and_masks_positives_of_a_large_catalogue():
    """A user's bias shifts a whole row (no change to its softmax); the searchsorted form of the positives
    (catalogues too large for a bitmap) masks the same cells as the bitmap."""
    positives = PositiveSet(pairs([0, 1, 1], [0, 2, 3], 2, 4))
    base = catalog_kd_loss(hand_ctx(positives=positives), alpha=1.0, T=0.7)
    ctx = hand_ctx(positives=positives)
    with torch.no_grad():
        ctx.student.user_bias.weight.fill_(5.0)
    close(catalog_kd_loss(ctx, alpha=1.0, T=0.7), base.item())
    keys = PositiveSet(pairs([0, 1, 1], [0, 2, 3], 2, 4))
    keys.keys, keys.bitmap = torch.sort(positives.bitmap.nonzero().flatten()).values, None
    close(catalog_kd_loss(hand_ctx(positives=keys), alpha=1.0, T=0.7), base.item())


def test_catalog_kl_matches_autograd_through_listwise_term():
    """CatalogKL's value and closed-form gradient equal autograd's through listwise_term, masked cells being
    scored so low that no probability survives them."""
    g = torch.Generator().manual_seed(3)
    s0, t = torch.randn(3, 7, generator=g) * 2, torch.randn(3, 7, generator=g) * 2
    seen = torch.rand(3, 7, generator=g) < 0.3
    seen[:, 0] = False
    for T in (0.2, 1.0, 3.0):
        a, b = s0.clone().requires_grad_(), s0.clone().requires_grad_()
        ours = CatalogKL.apply(a, t, seen, T)
        ref = listwise_term(b.masked_fill(seen, -1e30), t.masked_fill(seen, -1e30), T)
        (ours * 1.7).backward()
        (ref * 1.7).backward()
        close(ours, ref.item())
        assert torch.allclose(a.grad, b.grad, atol=1e-6) and not a.grad[seen].any()


def test_catalog_kd_skips_a_user_who_trained_on_every_item():
    positives = PositiveSet(pairs([0, 1, 1, 1, 1], [0, 0, 1, 2, 3], 2, 4))
    only_user_0 = kl([v for v in T_[0][1:]], [v for v in S[0][1:]])
    close(catalog_kd_loss(hand_ctx(positives=positives), alpha=0.4, T=1.0), 0.6 * BPR + 0.4 * only_user_0)
    everything = PositiveSet(pairs([0] * 4 + [1] * 4, [0, 1, 2, 3] * 2, 2, 4))
    close(catalog_kd_loss(hand_ctx(positives=everything), alpha=0.4, T=1.0), 0.6 * BPR)


# ----------------------------------------------------------------------------- dcd


def test_student_ranks_hand():
    student = table_mf(S)
    users, topn = torch.tensor([0, 1]), torch.tensor([[1, 2, 3], [0, 1, 3]])
    # user 0 scores [2, 1, 0, -1]: items 1, 2, 3 have 1, 2, 3 items above; user 1 [0.5, -0.5, 1.5, 3]
    assert student_ranks(student, users, topn, cap=10).tolist() == [[1, 2, 3], [2, 3, 0]]
    assert student_ranks(student, users, topn, cap=2).tolist() == [[1, 2, 2], [2, 2, 0]]  # capped
    # a training positive (user 0, item 0) is not a candidate: it no longer counts above the others
    positives = PositiveSet(pairs([0], [0], 2, 4))
    assert student_ranks(student, users, topn, cap=10, positives=positives).tolist() == [[0, 1, 2], [2, 3, 0]]
    assert rank_cap(100, 10.0) == 200


def test_dcd_weights_hand():
    under, over = dcd_weights(torch.tensor([[2, 3, 0]]), 2.0)  # teacher ranks 0, 1, 2: gaps 2, 2, -2
    assert torch.allclose(under, torch.tensor([[math.tanh(1.0), math.tanh(1.0), 1e-5]]))
    assert torch.allclose(over, torch.tensor([[1e-5, 1e-5, math.tanh(1.0)]]))
    # past the cap the weights are those of any larger rank, in float32
    big, capped = dcd_weights(torch.tensor([[10_000]]), 10.0), dcd_weights(torch.tensor([[rank_cap(1, 10.0)]]), 10.0)
    assert torch.equal(big[0], capped[0]) and torch.equal(big[1], capped[1])


def test_draw_weighted_is_without_replacement_in_draw_order():
    g = torch.Generator().manual_seed(0)
    cols = draw_weighted(torch.tensor([3.0, 1.0]).expand(20_000, 2).contiguous(), 1, g)
    assert abs((cols == 0).float().mean().item() - 0.75) < 0.02
    # the first draw is the heaviest column almost surely, then the next one
    cols = draw_weighted(torch.tensor([1e-6, 1e6, 1.0]).expand(100, 3).contiguous(), 3, g)
    assert (cols == torch.tensor([1, 2, 0])).all()


def test_dcd_loss_hand(monkeypatch):
    """dcd_k=1 with the draw replaced by the heaviest column: user 0 (student ranks 1, 2, 3 of teacher ranks
    0, 1, 2: all gaps 1) corrects item 1 against item 1; user 1 (ranks 2, 3, 0) item 0 against item 3."""
    seen = []

    def heaviest(weights, k, generator):
        seen.append(weights.clone())
        return weights.argmax(1, keepdim=True)

    monkeypatch.setattr("kdtune.losses.dcd.draw_weighted", heaviest)
    a = 0.4
    value = get_loss("dcd").fn(hand_ctx(), alpha=a, dcd_k=1, dcd_t=1.0)
    t1, t2 = math.tanh(1.0), math.tanh(2.0)
    assert torch.allclose(seen[0], torch.tensor([[t1, t1, t1], [t2, t2, 1e-5]]))  # under-estimated
    assert torch.allclose(seen[1], torch.tensor([[1e-5, 1e-5, 1e-5], [1e-5, 1e-5, t2]]))  # over-estimated
    # RRD with one interesting and one uninteresting item: log(1 + exp(s_over - s_under))
    soft = (math.log(2.0) + softplus(3.0 - 0.5)) / 2
    close(value, (1 - a) * BPR + a * soft)


def test_dcd_draws_once_per_epoch_from_the_students_ranking():
    ctx = random_ctx("dcd")
    ctx.draws, ctx.epoch = {}, 0
    d = get_loss("dcd")
    d.fn(ctx, alpha=0.5, **d.params)
    table = ctx.draws["epoch_draw"][1]
    assert table[0].shape == (ctx.topn.shape[0], d.params["dcd_k"])  # every user at once
    for items, top in zip(table[0], ctx.topn, strict=True):  # drawn from the user's top-N, no repeats
        assert set(items.tolist()) <= set(top.tolist()) and len(set(items.tolist())) == len(items)
    d.fn(ctx, alpha=0.5, **d.params)
    assert ctx.draws["epoch_draw"][1] is table
    ctx.epoch = 1
    d.fn(ctx, alpha=0.5, **d.params)
    assert ctx.draws["epoch_draw"][1] is not table


# ----------------------------------------------------------------------------- unkd


def test_item_popularity_counts_training_pairs(monkeypatch):
    train = pairs([0, 0, 1], [0, 1, 0], 2, 4)
    topn = torch.tensor([[2, 3], [2, 1]])
    assert item_popularity(PositiveSet(train), topn, 4).tolist() == [2, 1, 0, 0]
    monkeypatch.setattr("kdtune.data.sampler.MAX_BITMAP_CELLS", 0)  # the sorted-keys form
    keyed = PositiveSet(train)
    assert keyed.bitmap is None and item_popularity(keyed, topn, 4).tolist() == [2, 1, 0, 0]
    assert item_popularity(None, topn, 4).tolist() == [0, 1, 2, 1]  # top-N appearances stand in


def test_popularity_groups_hand():
    # share 5: {0} (4; adding item 1 would pass 5), {1, 2} (5), then {3} (1 < 2.5) joins it; item 4 unseen
    assert popularity_groups(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0]), 2).tolist() == [0, 1, 1, 1, 1]
    # an item alone past the share (7) closes its group at once; the rest (5 > 3.5) is the next group
    assert popularity_groups(torch.tensor([1.0, 9.0, 2.0, 2.0]), 2).tolist() == [1, 0, 1, 1]
    # ... and a rest of at most half a share (3 of 6) joins the group before it: one group (KDs' rule)
    assert popularity_groups(torch.tensor([1.0, 9.0, 1.0, 1.0]), 2).tolist() == [0, 0, 0, 0]


def test_pairs_per_group_hand():
    counts, group = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0]), torch.tensor([0, 1, 1, 1, 1])
    # mean popularity 4 and 1.5: shares (5.5 - 4) / 5.5 = 0.27 and 0.73; lamda 0 makes them equal
    assert pairs_per_group(counts, group, 10, 1.0) == [3, 7]
    assert pairs_per_group(counts, group, 4, 0.0) == [2, 2]
    assert pairs_per_group(counts, group, 1, 0.0) == [1, 0]  # round(0.5) = 0 twice: the first group gets one


def test_group_lists_hand():
    ctx = hand_ctx(positives=PositiveSet(pairs([0], [0], 2, 4)))
    lists = group_lists(ctx, torch.tensor([0, 1]), torch.tensor([0, 0, 1, 1]))
    (items0, n0), (items1, n1) = lists
    # teacher [[3, .5, 1, -2], [1, 2, -1, 0]]; user 0's item 0 is a positive
    assert n0.tolist() == [1, 2] and items0[0, 0] == 1 and items0[1].tolist() == [1, 0]
    assert n1.tolist() == [2, 2] and items1.tolist() == [[2, 3], [3, 2]]


def test_draw_pairs_distinct_ordered_and_rank_aware():
    n_rows = 4000
    n_valid = torch.tensor([1, 2, 5]).repeat(n_rows)
    better, worse, valid = draw_pairs(n_valid, 1, torch.Generator().manual_seed(0))
    better, worse, valid = better.view(n_rows, 3), worse.view(n_rows, 3), valid.view(n_rows, 3)
    assert not valid[:, 0].any() and valid[:, 1:].all()  # one item: no pair
    assert (better[:, 1] == 0).all() and (worse[:, 1] == 1).all()
    assert (better[:, 2] < worse[:, 2]).all() and (worse[:, 2] < 5).all()
    # P(better = 0): i.i.d. positions p ∝ exp(-(i + 1) / 20) given distinct
    w = [math.exp(-(i + 1) / 20) for i in range(5)]
    norm = sum(w) ** 2 - sum(x * x for x in w)
    p0 = 2 * w[0] * (sum(w) - w[0]) / norm
    assert abs((better[:, 2] == 0).float().mean().item() - p0) < 0.03


def test_unkd_term_hand():
    better, worse = torch.tensor([[1.0, 0.0], [2.0, 2.0]]), torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    valid = torch.tensor([[True, True], [False, False]])
    close(unkd_term(better, worse, valid), (softplus(-1.0) + softplus(1.0)) / 2)  # user 1 has no pair
    valid = torch.tensor([[True, False], [True, True]])
    close(unkd_term(better, worse, valid), (softplus(-1.0) + softplus(-2.0)) / 2)
    close(unkd_term(better, worse, torch.zeros(2, 2, dtype=torch.bool)), 0.0)


def test_unkd_pairs_are_teacher_ordered_within_a_group():
    ctx = random_ctx("unkd")
    positives = PositiveSet(pairs([0, 0, 1, 2, 3, 3, 3], [0, 1, 0, 5, 5, 6, 0], 8, 30))
    ctx.positives, ctx.draws = positives, {}
    d = get_loss("unkd")
    params = {**d.params, "unkd_pairs": 6}
    value = d.fn(ctx, alpha=0.5, **params)
    _, group, per, _ = ctx.draws["unkd_setup"]
    assert sum(per) == 6
    better, worse, valid = ctx.draws["epoch_draw"][1]
    # counts: item 0: 3, item 5: 2, items 1 and 6: 1 -> groups {0} and the rest; 3 pairs each
    assert group.tolist() == [0] + [1] * 29 and per == [3, 3]
    assert not valid[:, :3].any() and valid[:, 3:].all()  # group {0}: one item at most, no pair
    with torch.no_grad():
        for u in range(8):
            for b, w in zip(better[u, 3:].tolist(), worse[u, 3:].tolist(), strict=True):
                assert group[b] == group[w] == 1 and b != w
                assert ctx.teacher(torch.tensor([u]), torch.tensor([b])) >= ctx.teacher(torch.tensor([u]),
                                                                                        torch.tensor([w]))
                assert not positives.contains(torch.tensor([u, u]), torch.tensor([b, w])).any()
    users = torch.unique(ctx.users)
    soft = unkd_term(ctx.student(users, better[users]), ctx.student(users, worse[users]), valid[users])
    bpr = bpr_term(ctx.student(ctx.users, ctx.pos) - ctx.student(ctx.users, ctx.neg))
    assert torch.allclose(value, 0.5 * bpr + 0.5 * soft)


# ----------------------------------------------------------------------------- htd


def test_topology_term_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # entity level: group 0 = {0, 1}: cos_s 0, cos_t 1 on both ordered pairs; 4 + 1 ordered pairs in all
    entity = 2 * 1.0 / 5
    # group level: student prototypes [.5, .5] and [1, 1] (both along [1, 1]), teacher [1, 0] and [0, 1]
    r = 1 / math.sqrt(2)
    cos_s = [[r, r, 1.0], [r, r, 1.0]]
    cos_t = [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    group = sum((a - b) ** 2 for ra, rb in zip(cos_s, cos_t, strict=True) for a, b in zip(ra, rb, strict=True)) / 6
    close(topology_term(s, t, torch.tensor([0, 0, 1])), entity + group)
    # a zero embedding stays finite
    assert torch.isfinite(topology_term(torch.zeros(3, 2), t, torch.tensor([0, 0, 1])))


def test_within_group_gap_is_the_pairwise_sum_under_autograd():
    torch.manual_seed(0)
    a, b = torch.randn(30, 3, requires_grad=True), torch.randn(30, 5)
    got = within_group_gap(a, b)
    (got * 0.3).backward()
    grad, a.grad = a.grad.clone(), None
    ref = (a @ a.T - b @ b.T).pow(2).sum()
    (ref * 0.3).backward()
    assert torch.allclose(got.float(), ref, rtol=1e-5)
    assert torch.allclose(grad, a.grad, rtol=1e-4, atol=1e-5)
    close(within_group_gap(torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [1.0]])), 1 + 2 * 2**2 + 3**2)


def test_group_assignment_term_hand():
    ex = SoftExperts(1, 1, 1)  # one expert: the mixture is that expert whatever the noise
    with torch.no_grad():
        ex.w1.fill_(2.0), ex.b1.fill_(0.0), ex.w2.fill_(3.0), ex.b2.fill_(1.0)
    s, t = torch.tensor([[1.0], [-1.0]]), torch.tensor([[5.0], [0.0]])
    # expert(s) = 3 relu(2 s) + 1 = [7, 1]
    close(group_assignment_term(ex, s, t, 0.5, torch.Generator().manual_seed(0)), ((5 - 7) ** 2 + 1) / 2)


def test_soft_experts_mixture_is_every_expert_weighted():
    torch.manual_seed(0)
    ex = SoftExperts(3, 5, 4)
    s, z = torch.randn(6, 3), torch.softmax(torch.randn(6, 4), 1)
    ref = sum(z[:, e : e + 1] * (torch.relu(s @ ex.w1[e] + ex.b1[e]) @ ex.w2[e] + ex.b2[e]) for e in range(4))
    assert torch.allclose(ex.mixture(s, z), ref, atol=1e-6)


def test_anneal_tau_is_kds_schedule():
    assert anneal_tau(0, 1000) == 1.0
    assert math.isclose(anneal_tau(500, 1000), 1e-5)
    assert anneal_tau(5000, 1000) == 1e-10


def test_htd_loss_is_its_parts():
    ctx = random_ctx("htd")
    ctx.epoch = 3
    d = get_loss("htd")
    a, beta = 0.6, 0.7
    params = {**d.params, "htd_beta": beta, "htd_anneal": 10.0}
    value = d.fn(ctx, alpha=a, **params)
    ctx.generator.manual_seed(0)
    ex, tau = ctx.extra, anneal_tau(3, 10.0)
    users, items = torch.unique(ctx.users), torch.unique(torch.cat([ctx.pos, ctx.neg]))
    t_u, t_i = ctx.teacher.user_vectors(users), ctx.teacher.item_vectors(items)
    s_u, s_i = ctx.student.user_vectors(users), ctx.student.item_vectors(items)
    ga = group_assignment_term(ex.user, s_u, t_u, tau, ctx.generator)
    ga = ga + group_assignment_term(ex.item, s_i, t_i, tau, ctx.generator)
    groups = torch.cat([ex.user.assign(t_u).argmax(1), ex.item.assign(t_i).argmax(1) + ex.n_experts])
    td = topology_term(torch.cat([s_u, s_i]), torch.cat([t_u, t_i]), groups)
    bpr = bpr_term(ctx.student(ctx.users, ctx.pos) - ctx.student(ctx.users, ctx.neg))
    assert torch.allclose(value, bpr + a * (beta * td + (1 - beta) * ga), atol=1e-5)


def test_htd_requires_matching_extra():
    with pytest.raises(ValueError, match="make_extra"):
        get_loss("htd").fn(hand_ctx(), alpha=0.5)
    with pytest.raises(ValueError, match="htd_experts"):
        get_loss("htd").fn(hand_ctx(extra=TopologyExperts(2, 2, 3)), alpha=0.5, htd_experts=30)


# ----------------------------------------------------------------------------- all four




@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("epochs", [False, True])
def test_gradients_reach_student_and_extra_only(name, epochs):
    d = get_loss(name)
    ctx = random_ctx(name, teacher_requires_grad=True)
    if epochs:  # the training loop's form: per-epoch draws, training positives
        ctx.draws, ctx.positives = {}, PositiveSet(pairs([0, 1, 2], [3, 4, 5], 8, 30))
    before = copy.deepcopy(ctx.teacher.state_dict())
    loss = d.fn(ctx, alpha=0.7, T=2.0, **d.params)
    assert torch.isfinite(loss) and loss.shape == ()
    loss.backward()
    assert ctx.student.user_emb.weight.grad.abs().sum() > 0
    assert ctx.student.item_emb.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in ctx.teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in ctx.teacher.state_dict().items())
    if ctx.extra is not None:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ctx.extra.parameters())


@pytest.mark.parametrize("name", METHODS)
def test_deterministic_under_a_seeded_generator(name):
    d = get_loss(name)
    values = []
    for seed in (0, 0, 1):
        ctx = random_ctx(name)
        ctx.generator.manual_seed(seed)
        ctx.draws = {}
        values.append(d.fn(ctx, alpha=0.5, T=3.0, **d.params))
    assert torch.equal(values[0], values[1])
    if name not in ("listwise", "catalog_kd"):  # the others sample (catalog_kd: only batches over its users)
        assert not torch.equal(values[0], values[2])


def test_registered_with_their_params():
    assert get_loss("listwise").params == {"listwise_k": 10}
    assert get_loss("dcd").params == {"dcd_k": 10, "dcd_t": 10.0}
    assert get_loss("unkd").params == {"unkd_groups": 2, "unkd_pairs": 2, "unkd_lamda": 0.0}
    assert get_loss("htd").params == {"htd_experts": 30, "htd_beta": 0.9, "htd_anneal": 1000.0}
    assert get_loss("catalog_kd").params == {"catalog_kd_users": 128}
    assert [n for n in METHODS if get_loss(n).uses_temperature] == ["listwise", "catalog_kd"]
    assert [n for n in METHODS if get_loss(n).make_extra] == ["htd"]


def test_space_entries_validate():
    space = parse_space({
        "params": {
            "lr": {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True},
            "dim": {"type": "categorical", "choices": [4, 8]},
            "alpha": {"type": "float", "low": 0.1, "high": 0.9},
            "loss": {"type": "categorical", "choices": METHODS},
        },
        "conditional": {
            "T": {"when": {"loss": ["listwise", "catalog_kd"]}, "type": "float", "low": 0.1, "high": 10.0, "log": True},
            "catalog_kd_users": {"when": {"loss": ["catalog_kd"]}, "type": "int", "low": 16, "high": 512, "log": True},
            "listwise_k": {"when": {"loss": ["listwise"]}, "type": "int", "low": 5, "high": 50},
            "dcd_k": {"when": {"loss": ["dcd"]}, "type": "int", "low": 5, "high": 40},
            "dcd_t": {"when": {"loss": ["dcd"]}, "type": "float", "low": 1.0, "high": 50.0, "log": True},
            "unkd_groups": {"when": {"loss": ["unkd"]}, "type": "int", "low": 1, "high": 5},
            "unkd_pairs": {"when": {"loss": ["unkd"]}, "type": "int", "low": 2, "high": 40, "log": True},
            "unkd_lamda": {"when": {"loss": ["unkd"]}, "type": "float", "low": 0.0, "high": 1.0},
            "htd_experts": {"when": {"loss": ["htd"]}, "type": "int", "low": 5, "high": 40},
            "htd_beta": {"when": {"loss": ["htd"]}, "type": "float", "low": 0.5, "high": 1.0},
            "htd_anneal": {"when": {"loss": ["htd"]}, "type": "float", "low": 20.0, "high": 1000.0, "log": True},
        },
    })
    assert set(space.losses) == set(METHODS)
    with pytest.raises(Exception, match="temperature"):
        parse_space({"params": {"lr": {"type": "float", "low": 0.001, "high": 0.01}, "dim": {"type": "int",
                     "low": 4, "high": 8}, "alpha": {"type": "float", "low": 0.1, "high": 0.9},
                     "loss": {"type": "categorical", "choices": ["dcd"]}},
                     "conditional": {"T": {"when": {"loss": ["dcd"]}, "type": "float", "low": 1.0, "high": 2.0}}})


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def tiny():
    parts = split(synthetic(n_users=120, n_items=150, seed=0), seed=0)
    teacher = MF(parts.train.n_users, parts.train.n_items, 16, seed=0)
    fit(teacher, parts.train, parts.valid, epochs=4, batch_size=256, lr=0.02, rescore_best=False)
    teacher.eval().requires_grad_(False)
    return parts, teacher, compute_topn(teacher, parts.train, 30)


@pytest.mark.parametrize("name", METHODS)
def test_fit_trains_without_nan(tiny, name):
    parts, teacher, topn = tiny
    student, result = distill(teacher, topn, parts.train, parts.valid, 4, name, alpha=0.5, T=2.0, epochs=3,
                              batch_size=256, lr=0.02, rescore_best=False)
    assert result.epochs_run == 3
    assert all(math.isfinite(row["loss"]) for row in result.history)
    assert all(torch.isfinite(p).all() for p in student.parameters())
