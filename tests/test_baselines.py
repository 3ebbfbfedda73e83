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
