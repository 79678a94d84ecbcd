"""peftbench's built-in metrics, registered through the same hook a third-party plugin uses."""

import numpy as np

import peftbench
from peftbench.tasks import Metric


def accuracy(pred, gold):
    """The fraction of equal labels: scikit-learn's accuracy_score, without importing scikit-learn
    (0.5 s) into every run of an accuracy task (tests/test_tasks.py compares the two)."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    if pred.shape != gold.shape or pred.ndim != 1:
        raise ValueError(f"accuracy: predictions of shape {pred.shape} against labels of shape {gold.shape}")
    return float(np.mean(pred == gold))


def f1(pred, gold):
    from sklearn.metrics import f1_score

    return float(f1_score(gold, pred))


def mcc(pred, gold):
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(gold, pred))


def _constant(x) -> bool:
    """All values equal (np.std of a constant float array can come out as 1e-17, not 0)."""
    x = np.asarray(x)
    return x.size == 0 or bool(np.all(x == x.flat[0]))


def pearson(pred, gold):
    from scipy.stats import pearsonr

    if _constant(pred) or _constant(gold):
        return 0.0  # a constant prediction has no correlation
    return float(pearsonr(pred, gold)[0])


def spearman(pred, gold):
    from scipy.stats import spearmanr

    if _constant(pred) or _constant(gold):
        return 0.0
    return float(spearmanr(pred, gold)[0])


METRICS = (
    Metric("accuracy", accuracy, description="fraction of examples classified correctly"),
    Metric("f1", f1, description="F1 of the positive class (scikit-learn)"),
    Metric("mcc", mcc, description="Matthews correlation coefficient (scikit-learn)"),
    Metric("pearson", pearson, description="Pearson correlation (scipy; 0 for a constant prediction)"),
    Metric("spearman", spearman, description="Spearman rank correlation (scipy; 0 for a constant prediction)"),
)


@peftbench.hookimpl
def peftbench_register_metrics(register):
    for metric in METRICS:
        register(metric)
