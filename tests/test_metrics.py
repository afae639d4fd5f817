import numpy as np
import pytest

from csra_cli.evaluation.metrics import average_precision, best_f1_thresholds, evaluate, threshold_metrics


def test_ap_hand_built():
    # ranks: pos, neg, pos, neg -> precision at positives 1/1 and 2/3
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0.9, 0.8]), np.array([1, 1])) == 1.0
    assert np.isnan(average_precision(np.array([0.3, 0.2]), np.array([0, 0])))


def test_ap_ties_count_as_one_threshold_regardless_of_order():
    s = np.array([0.5, 0.5, 0.5, 0.1])
    a = average_precision(s, np.array([1, 0, 0, 1]))
    b = average_precision(s, np.array([0, 0, 1, 1]))
    assert a == b == pytest.approx(0.5 * (1 / 3) + 0.5 * 0.5)


def test_ignored_labels_are_dropped():
    s = np.array([0.9, 0.8, 0.7])
    assert average_precision(s, np.array([-1, 1, 0])) == 1.0
    assert average_precision(s, np.array([0, 1, -1])) == 0.5


def test_ap_matches_scikit_learn_on_random_data():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 200)
        y[0] = 1
        s = rng.random(200).round(2)  # with ties
        assert average_precision(s, y) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


def test_voc07_11pt():
    s, y = np.array([0.9, 0.8, 0.7, 0.1]), np.array([1, 0, 1, 0])
    # precision envelope: recall<=0.5 -> 1, recall<=1 -> 2/3
    assert average_precision(s, y, "voc07-11pt") == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def test_threshold_metrics_hand_built():
    scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.8]])
    labels = np.array([[1, 0], [0, 1], [1, 1]])
    m = threshold_metrics(scores, labels, 0.5)
    # class 0: pred {0,1}, tp 1 -> P .5 R .5 ; class 1: pred {1,2}, tp 2 -> P 1 R 1
    assert m["CP"] == pytest.approx(75) and m["CR"] == pytest.approx(75) and m["CF1"] == pytest.approx(75)
    assert m["OP"] == pytest.approx(75) and m["OR"] == pytest.approx(75) and m["OF1"] == pytest.approx(75)


def test_empty_predictions_give_zero_not_nan():
    m = threshold_metrics(np.zeros((3, 2)), np.array([[1, 0], [0, 1], [1, 1]]), 0.5)
    assert m["CP"] == 0 and m["OP"] == 0 and m["CF1"] == 0 and m["OF1"] == 0


def test_evaluate_lists_classes_without_positives_and_averages_the_rest():
    scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.4, 0.3]])
    labels = np.array([[1, 0, 0], [0, 1, 0]])
    r = evaluate(scores, labels, ["a", "b", "c"])
    assert r["classes_without_positives"] == ["c"]
    assert r["mAP"] == pytest.approx(100 * (1.0 + 0.5) / 2)
    assert r["per_class"]["c"]["AP"] is None and r["per_class"]["a"]["positives"] == 1
    assert r["num_images"] == 2


def test_best_f1_thresholds_separate_the_classes():
    scores = np.array([[0.9, 0.3], [0.8, 0.2], [0.3, 0.15], [0.2, 0.1]])
    labels = np.array([[1, 1], [1, 1], [0, 0], [0, 0]])
    t = best_f1_thresholds(scores, labels)
    assert t[0] == pytest.approx(0.55) and t[1] == pytest.approx(0.175)
    assert ((scores >= t) == (labels == 1)).all()


def test_best_f1_threshold_trades_precision_for_recall():
    # 0.3 P, 0.25 N, 0.2 P, 0.1 N: taking both positives (F1 0.8) beats stopping at 0.3 (F1 0.67)
    t = best_f1_thresholds(np.array([[0.3], [0.25], [0.2], [0.1]]), np.array([[1], [0], [1], [0]]))
    assert t[0] == pytest.approx(0.15)
