import pandas as pd

from kdtune.report.front import behind_plain


def test_a_distilled_student_must_beat_the_plain_one_of_its_size_on_every_metric():
    plain = pd.DataFrame({"trial_id": ["plain-dim4", "plain-dim8"], "dim": [4, 8],
                          "recall@20": [0.055, 0.080], "ndcg@20": [0.031, 0.045]})
    trials = pd.DataFrame({
        "trial_id": ["better", "recall-only", "ndcg-only", "tie", "no-plain", "dim8-better"],
        "dim": [4, 4, 4, 4, 16, 8],
        "recall@20": [0.060, 0.056, 0.050, 0.055, 0.010, 0.090],
        "ndcg@20": [0.032, 0.030, 0.040, 0.031, 0.001, 0.050],
    })
    behind = behind_plain(trials, plain, ["recall@20", "ndcg@20"])
    assert behind.tolist() == [False, True, True, True, False, False]
    # one metric only: the recall-only student is not behind on recall
    assert behind_plain(trials, plain, ["recall@20"]).tolist() == [False, False, True, True, False, False]


def test_plain_students_run_the_whole_budget_on_the_teachers_validation_sample():
    """No early stop on a noisy signal: patience is the epoch budget, the best epoch is chosen on at least the
    teacher's validation sample (all users stays all users)."""
    from kdtune.config import TeacherSettings
    from kdtune.search.baselines import plain_jobs, plain_signal_users
    from kdtune.search.spacefile import load_space

    space = load_space("default")
    jobs, train_kwargs = plain_jobs(space)
    assert train_kwargs["epochs"] == space.fixed["epochs"] and train_kwargs["patience"] == space.fixed["epochs"]
    assert len(jobs) == 3 * len(space.dims())
    assert plain_signal_users(256) == TeacherSettings.valid_users == 2048
    assert plain_signal_users(0) == 0 and plain_signal_users(5000) == 5000


def test_plain_students_trained_during_the_search_are_those_of_a_serial_run(ray_cluster, tmp_path):
    """Started as Ray tasks beside the trials, collected after them: the same rows, weights and baselines
    file as the same students trained one after another."""
    import ray
    import torch

    from kdtune.config import DataSettings, SearchSettings, TeacherSettings
    from kdtune.data import prepare
    from kdtune.search.baselines import best_plain, run_baselines, serial_plain_rows, start_plain_students
    from kdtune.search.run import BASELINES_FILE, Run
    from kdtune.search.spacefile import load_space
    from kdtune.train.teacher import train_teacher

    data = DataSettings(data="synthetic:users=200,items=300", k=10, seed=3, cache_dir=str(tmp_path / "cache"))
    _, split = prepare(data)
    space = load_space("smoke")
    pending = start_plain_students(ray.put(split), space, 10, 3, {"cpu": 1, "gpu": 0}, valid_users=0)
    serial, weights = best_plain(serial_plain_rows(split, space, 10, 3, valid_users=0), 10)
    knowledge = train_teacher(split, TeacherSettings(dim=8, epochs=2, k=10, seed=3), progress=False)
    run = Run(dir=tmp_path, data=data, search=SearchSettings(valid_users=0), space=space, split=split)
    baselines = run_baselines(run, knowledge, pending)

    plain = baselines[baselines["kind"].eq("plain")].reset_index(drop=True)
    assert len(plain) == len(space.dims()) and plain["trial_id"].tolist() == serial["trial_id"].tolist()
    columns = ["dim", "lr", "recall@10", "ndcg@10", "test_recall@10", "test_ndcg@10", "best_epoch", "epochs_run"]
    pd.testing.assert_frame_equal(plain[columns], serial[columns], check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / BASELINES_FILE), baselines)
    from kdtune.model.store import load_model

    for trial_id, (_, state) in weights.items():
        saved = load_model(tmp_path / "students" / trial_id).state_dict()
        assert all(torch.equal(saved[name], value) for name, value in state.items()), trial_id
