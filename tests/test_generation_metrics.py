"""E2E metrics: the official scorer's numbers (tuetschek/e2e-metrics, ``measure_scores.py -p``)
on the two reference cases in ../shared/e2e-metrics, and the module's own contract."""

import shutil
from functools import lru_cache
from pathlib import Path

import pytest

from peftbench.errors import PeftbenchError
from peftbench.generation.metrics import (METRICS, _coco_tokenize, _coco_tokenize_all, meteor_available, read_grouped,
                                         score_e2e)

DATA = Path(__file__).resolve().parents[2] / "shared" / "e2e-metrics"
# references, outputs, and the official scores (from DATA / "README.md")
CASES = {
    "baseline": ("devel-conc.txt", "baseline-output.txt",
                 {"bleu": 0.7203, "nist": 7.7889, "meteor": 0.4801, "rouge_l": 0.7910, "cider": 2.3039}),
    "template": ("dev-refs.txt", "dev-template-output.txt",
                 {"bleu": 0.6050, "nist": 7.4243, "meteor": 0.4636, "rouge_l": 0.6891, "cider": 2.1109}),
}
PURE_PYTHON = ("bleu", "nist", "rouge_l", "cider")
TOLERANCE = 0.005  # ROUGE-L, CIDEr, METEOR; BLEU and NIST must agree to 4 decimals

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"reference scores not found at {DATA}")


@lru_cache(maxsize=None)
def load(case):
    """(outputs, references) of a reference case."""
    refs_file, outputs_file, _ = CASES[case]
    outputs = [line.strip() for line in (DATA / outputs_file).read_text(encoding="utf-8").splitlines()]
    return outputs, read_grouped(DATA / refs_file)


@lru_cache(maxsize=None)
def pure_python_scores(case):
    """BLEU, NIST, ROUGE-L and CIDEr of a reference case, computed once."""
    return score_e2e(*load(case), metrics=PURE_PYTHON)


def check(case, metric, value):
    """BLEU and NIST equal to 4 decimals, the others within TOLERANCE of the official score."""
    expected = CASES[case][2][metric]
    if metric in ("bleu", "nist"):
        assert round(value, 4) == expected, f"{case} {metric}: {value:.6f}, official {expected}"
    else:
        assert abs(value - expected) <= TOLERANCE, f"{case} {metric}: {value:.6f}, official {expected}"


@needs_data
@pytest.mark.parametrize("case", CASES)
def test_reference_files_read_as_the_scorer_reads_them(case):
    outputs, refs = load(case)
    assert len(outputs) == len(refs) == (10 if case == "baseline" else 547)
    assert all(refs) and sum(map(len, refs)) == (137 if case == "baseline" else 4672)


@needs_data
@pytest.mark.parametrize("metric", PURE_PYTHON)
@pytest.mark.parametrize("case", CASES)
def test_pure_python_metrics_match_the_official_scorer(case, metric):
    check(case, metric, pure_python_scores(case)[metric])


@needs_data
@pytest.mark.parametrize("case", [
    "baseline",
    pytest.param("template", marks=pytest.mark.slow),  # about 12 s of Java
])
def test_meteor_matches_the_official_scorer(case):
    if (why := meteor_available()) is not None:
        pytest.skip(why)
    scores = score_e2e(*load(case), metrics=("meteor",))
    assert list(scores) == ["meteor"]
    check(case, "meteor", scores["meteor"])


def test_all_metrics_come_back_in_order(monkeypatch):
    monkeypatch.setattr("peftbench.generation.metrics._meteor", lambda hyps, refs: 0.5)
    monkeypatch.setattr("peftbench.generation.metrics.meteor_available", lambda: None)
    scores = score_e2e(["a pub near the river"], [["a pub near the river", "a riverside pub"]])
    assert list(scores) == list(METRICS) and all(isinstance(v, float) for v in scores.values())


def test_a_perfect_hypothesis_scores_bleu_one():
    text = "The Eagle is a family-friendly coffee shop near Burger King."
    scores = score_e2e([text], [[text]], metrics=("bleu", "rouge_l"))
    assert scores["bleu"] == pytest.approx(1.0, abs=1e-12)
    assert scores["rouge_l"] == pytest.approx(1.0, abs=1e-12)


def test_bleu_is_below_one_for_a_different_hypothesis():
    hyp, ref = "The Eagle is a pub near Burger King.", "The Eagle is a coffee shop near Burger King."
    scores = score_e2e([hyp], [[ref]], metrics=("bleu",))
    assert 0.0 < scores["bleu"] < 1.0


@pytest.mark.parametrize("hyps, refs", [
    (["one", "two"], [["one"]]),  # length mismatch
    (["one"], [[]]),  # an instance without references
    (["one"], [["one"], ["two"]]),
])
def test_bad_inputs_raise_one_line(hyps, refs):
    with pytest.raises(PeftbenchError) as err:
        score_e2e(hyps, refs, metrics=("bleu",))
    assert "\n" not in str(err.value)


def test_unknown_metric_is_named():
    with pytest.raises(PeftbenchError, match="bleuu.*did you mean bleu"):
        score_e2e(["a"], [["a"]], metrics=("bleuu",))


def test_meteor_without_java_names_the_fix(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    why = meteor_available()
    assert why is not None and "\n" not in why
    assert "apt-get install default-jre-headless" in why and "--no-meteor" in why
    with pytest.raises(PeftbenchError, match="--no-meteor"):
        score_e2e(["a"], [["a"]], metrics=("meteor",))
    assert score_e2e(["a b c d"], [["a b c d"]], metrics=("bleu",))["bleu"] == pytest.approx(1.0)


@pytest.mark.parametrize("text, tokens", [  # outputs of the real CoreNLP 3.4.1 PTBTokenizer
    ("It isn't cheap: £20-25.", "it is n't cheap # 20-25"),
    ("Near Café Sicilia (riverside), it's 5 out of 5!",
     "near café sicilia -lrb- riverside -rrb- it 's 5 out of 5"),
    ("It is in the city center., close to the pub.It is 'Aromi'.",
     "it is in the city center. close to the pub.it is aromi"),
    ("Prices are £20-£25 -- average.", "prices are # 20 # 25 average"),
    ("Dr. Smith's U.S. cafe can't... ok?!", "dr. smith 's u.s. cafe ca n't ok ?!"),
])
def test_coco_tokenisation_follows_the_ptb_tokenizer(text, tokens):
    assert _coco_tokenize(text) == tokens


def test_read_grouped_formats(tmp_path):
    grouped = tmp_path / "grouped.txt"
    grouped.write_text("a one\n a two \n\n\nb one\n\n", encoding="utf-8")
    assert read_grouped(grouped) == [["a one", "a two"], ["b one"]]
    single = tmp_path / "single.txt"
    single.write_text("first\nsecond\n", encoding="utf-8")
    assert read_grouped(single) == [["first"], ["second"]]


def test_coco_tokenisation_looks_past_a_lines_end_as_the_wrappers_file_does():
    """The wrapper writes every caption to one file, a line each; CoreNLP 3.4.1 (its real output
    on these lines, in this order) splits a final initial's period only before a sentence start."""
    lines = ["Near the Cafe Rouge is The Plough. A kids friendly pub serving reasonable Fast food for 20-25 L.",
             "The Plough is a kid friendly pub. Near the Cafe Rouge for a reasonable price of 20-25 L.",
             "Prices are 20-25 L.", "It is rated A.", "It is rated B.", "It is rated L.", "It is cheap. Rated L."]
    assert _coco_tokenize_all(lines) == [
        "near the cafe rouge is the plough a kids friendly pub serving reasonable fast food for 20-25 l",
        "the plough is a kid friendly pub near the cafe rouge for a reasonable price of 20-25 l.",
        "prices are 20-25 l", "it is rated a", "it is rated b", "it is rated l", "it is cheap rated l."]
