import dataclasses
import hashlib
import json
import math

import pytest
import torch

from kdtune.data import split, synthetic
from kdtune.model.mf import MF
from kdtune.train.evaluate import Popularity, evaluate
from kdtune.train.fit import DivergedError, distill, fit
from kdtune.train.teacher import (
    CACHE_FORMAT,
    TeacherSettings,
    cache_key,
    compute_topn,
    get_teacher,
)


@pytest.fixture(scope="module")
def parts():
    return split(synthetic(n_users=400, n_items=500, seed=0), seed=0)


@pytest.fixture(scope="module")
def teacher(parts, tmp_path_factory):
    settings = TeacherSettings(dim=32, epochs=15, lr=0.01, patience=3, lr_schedule="constant")
    return get_teacher(parts, settings, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def test_mf_scores_match_definition():
    model = MF(3, 4, 2, seed=0)
    users, items = torch.tensor([0, 2]), torch.tensor([1, 3])
    with torch.no_grad():
        model.user_bias.weight.fill_(0.5)
        model.item_bias.weight[:, 0] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    expected = (model.user_emb.weight[users] * model.item_emb.weight[items]).sum(1) + 0.5 + items.float()
    assert torch.allclose(model(users, items), expected)
    assert torch.allclose(model.full_scores(users)[torch.arange(2), items], expected)
    assert torch.allclose(model(users, items.unsqueeze(1)).squeeze(1), expected)
    assert model.n_params() == (3 + 4) * 3
    assert model.n_bytes() == model.n_params() * 4


def test_teacher_learns_beyond_popularity(parts, teacher):
    model = teacher.model()
    seen = [parts.train, parts.valid]
    ours = evaluate(model, seen, parts.test, ks=(20,))
    pop = evaluate(Popularity(parts.train), seen, parts.test, ks=(20,))
    assert ours["ndcg@20"] > 1.3 * pop["ndcg@20"], (ours, pop)
    assert not teacher.from_cache


def test_teacher_cache_hit_trains_nothing(parts, teacher, tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("cache2")
    settings = TeacherSettings(dim=8, epochs=2, patience=2)
    first = get_teacher(parts, settings, cache_dir=cache, progress=False)
    monkeypatch.setattr("kdtune.train.teacher.train_teacher", lambda *a, **k: pytest.fail("trained again"))
    second = get_teacher(parts, settings, cache_dir=cache, progress=False)
    assert second.from_cache and not first.from_cache
    assert torch.equal(first.topn, second.topn)
    for name, value in first.state.items():
        assert torch.equal(value, second.state[name])


def test_cache_key_covers_every_teacher_setting(parts):
    settings = TeacherSettings()
    payload = json.dumps({"format": CACHE_FORMAT, "split": parts.fingerprint(),
                          "settings": dataclasses.asdict(settings)}, sort_keys=True)
    assert cache_key(parts, settings) == hashlib.sha256(payload.encode()).hexdigest()[:20]
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        other = dataclasses.replace(settings, **{f.name: value + "x" if isinstance(value, str) else value + 1})
        assert cache_key(parts, other) != cache_key(parts, settings), f.name


def test_topn_masks_training_items_and_is_sorted(parts, teacher):
    model = teacher.model()
    topn = compute_topn(model, parts.train, 30, batch_size=64)
    assert topn.shape == (parts.train.n_users, 30)
    for u in range(0, parts.train.n_users, 37):
        assert not set(topn[u].tolist()) & set(parts.train.items_of(u).tolist())
        scores = model.full_scores(torch.tensor([u]))[0, topn[u]]
        assert torch.all(scores[:-1] >= scores[1:])


@pytest.mark.parametrize("optimizer", ["dense", "lazy"])
def test_fit_is_deterministic_and_restores_best(parts, optimizer):
    results = []
    for _ in range(2):
        model = MF(parts.train.n_users, parts.train.n_items, 8, seed=1)
        res = fit(model, parts.train, parts.valid, epochs=4, lr=0.02, weight_decay=0.1, seed=3, patience=10,
                  optimizer=optimizer, lr_schedule="cosine")
        results.append((res, model.state_dict()))
    (a, sa), (b, sb) = results
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the best epoch is chosen on the per-epoch signal (a fixed sample of validation users) ...
    signal = [h["ndcg@20"] for h in a.history]
    assert a.best_epoch == 1 + signal.index(max(signal))
    assert {h["n_users"] for h in a.history} == {min(256, int((parts.valid.user_counts() > 0).sum()))}
    # ... and its restored weights are then scored once on every validation user
    model = MF.from_state(MF(parts.train.n_users, parts.train.n_items, 8).arch(), sa)
    full = evaluate(model, parts.train, parts.valid)
    assert math.isclose(full["ndcg@20"], a.best_score, rel_tol=1e-6)
    assert a.best_metrics["n_users"] == full["n_users"] > 256


def test_signal_users_are_a_fixed_sample_and_all_means_all(parts):
    from kdtune.train.evaluate import sample_users

    first, again = sample_users(parts.valid, 50, seed=3), sample_users(parts.valid, 50, seed=3)
    assert torch.equal(first, again) and first.numel() == 50 and torch.all(first[1:] > first[:-1])
    assert bool((parts.valid.user_counts()[first] > 0).all())
    assert not torch.equal(first, sample_users(parts.valid, 50, seed=4))
    assert sample_users(parts.valid, 0) is None and sample_users(parts.valid, 10**6) is None
    model = MF(parts.train.n_users, parts.train.n_items, 8, seed=0)
    sub = evaluate(model, parts.train, parts.valid, users=first)
    assert sub["n_users"] == 50
    # the sample's metrics are the mean of the per-user metrics of those users alone
    by_user = [evaluate(model, parts.train, parts.valid, users=first[i : i + 1])["ndcg@20"] for i in range(50)]
    assert math.isclose(sub["ndcg@20"], sum(by_user) / 50, rel_tol=1e-9)


def test_early_stopping_stops(parts):
    model = MF(parts.train.n_users, parts.train.n_items, 4, seed=0)
    res = fit(model, parts.train, parts.valid, epochs=50, lr=1e-6, patience=2)
    assert res.stopped_early and res.epochs_run < 50


def test_divergence_is_an_error(parts):
    model = MF(parts.train.n_users, parts.train.n_items, 4, seed=0)
    with torch.no_grad():
        model.user_emb.weight[0, 0] = float("nan")
    with pytest.raises(DivergedError):
        fit(model, parts.train, parts.valid, epochs=2)


@pytest.mark.parametrize("loss", ["mse_diff", "soft_bce", "rd", "cd", "rrd", "de"])
def test_every_loss_distils_a_working_student(parts, teacher, loss):
    student, res = distill(teacher.model(), teacher.topn, parts.train, parts.valid, 8, loss,
                           epochs=3, lr=0.02, alpha=0.5, T=2.0)
    assert res.epochs_run >= 1 and math.isfinite(res.best_score)
    assert student.dim == 8
    # the teacher is never updated by distillation
    fresh = teacher.model()
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, teacher.state[name])


@pytest.mark.parametrize("loss", ["rrd", "de"])
def test_lazy_optimizer_distils_and_leaves_plain_parameters(parts, teacher, loss):
    student, res = distill(teacher.model(), teacher.topn, parts.train, parts.valid, 8, loss,
                           epochs=2, lr=0.02, weight_decay=0.1, optimizer="lazy")
    assert math.isfinite(res.best_score) and res.best_score > 0
    # training is over: the tables are plain parameters again (no optimiser hooks left on them)
    assert all(not hasattr(p, "_kdtune_rows") for p in student.parameters())
    student(torch.tensor([0]), torch.tensor([[1, 2]])).sum().backward()
    assert student.item_emb.weight.grad is not None


def test_distilling_needs_a_teacher(parts):
    with pytest.raises(ValueError, match="teacher"):
        distill(None, None, parts.train, parts.valid, 4, "rd", epochs=1)


@pytest.mark.parametrize("n_items", [1, 2, 4, 5, 30])
def test_row_dot_gradients_match_finite_differences(n_items):
    from kdtune.model.mf import _RowDot

    gen = torch.Generator().manual_seed(n_items)
    p = torch.randn(3, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    q = torch.randn(3, n_items, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.allclose(_RowDot.apply(p, q), (p.unsqueeze(1) * q).sum(-1))
    assert torch.autograd.gradcheck(_RowDot.apply, (p, q))


class _Batches:
    """A sampler of three fixed batches of 2, 3 and 1 triplets."""

    def epoch(self):
        for size in (2, 3, 1):
            zeros = torch.zeros(size, dtype=torch.long)
            yield zeros, zeros, torch.ones(size, dtype=torch.long)


def test_train_epoch_sums_batch_losses_weighted_by_their_triplets():
    from kdtune.train.fit import train_epoch

    losses = iter([0.5, 2.0, 4.0])
    total, n = train_epoch(MF(1, 2, 2, seed=0), _Batches(), lambda u, p, q: torch.tensor(next(losses)))
    assert n == 6 and total == pytest.approx(0.5 * 2 + 2.0 * 3 + 4.0 * 1)
    calls = []

    def diverging(u, p, q):
        calls.append(1)
        return torch.tensor(float("nan") if len(calls) == 2 else 1.0)

    with pytest.raises(DivergedError):  # on the CPU: at the first non-finite batch
        train_epoch(MF(1, 2, 2, seed=0), _Batches(), diverging)
    assert len(calls) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_train_epoch_on_a_gpu_reads_the_loss_once_an_epoch():
    from kdtune.train.fit import train_epoch

    values = iter([1.0, float("inf"), 1.0])
    calls = []

    def step(u, p, q):
        calls.append(1)
        return torch.tensor(next(values), device="cuda")

    with pytest.raises(DivergedError, match="during the epoch"):
        train_epoch(MF(1, 2, 2, seed=0), _Batches(), step)
    assert len(calls) == 3  # the whole epoch ran: no read of the loss between batches
