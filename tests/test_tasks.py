"""Task readers on slices of the real files, metrics on hand-made predictions, data errors."""

import math

import numpy as np
import pandas as pd
import pytest

from peftbench.errors import PeftbenchError
from peftbench.plugins import get_task, get_tasks
from peftbench.tasks import load_task_data, read_tsv, read_tsv_fast


def test_six_tasks_registered_with_versions():
    tasks = get_tasks()
    assert {"sst2", "cola", "rte", "mrpc", "stsb", "trec"} <= set(tasks)
    assert all(t.version >= 1 for t in tasks.values())


@pytest.mark.parametrize(
    "name,n_train,n_eval,pair,labels",
    [
        ("sst2", 160, 40, False, {0, 1}),
        ("cola", 120, 40, False, {0, 1}),
        ("rte", 80, 40, True, {0, 1}),
        ("mrpc", 80, 40, True, {0, 1}),
        ("trec", 120, 40, False, set(range(6))),
    ],
)
def test_readers_on_real_slices(small_data, name, n_train, n_eval, pair, labels):
    data = load_task_data(get_task(name), str(small_data))
    assert (len(data.train), len(data.eval)) == (n_train, n_eval)
    assert ("text_b" in data.train) == pair
    assert set(data.train.label) <= labels
    assert data.train.text_a.str.len().min() > 0


def test_first_rows_match_the_files(small_data):
    sst2 = load_task_data(get_task("sst2"), str(small_data)).train
    assert sst2.iloc[0].to_dict() == {"text_a": "hide new secretions from the parental units ", "label": 0}
    rte = load_task_data(get_task("rte"), str(small_data)).train
    assert rte.iloc[0].label == 1  # not_entailment
    cola = load_task_data(get_task("cola"), str(small_data)).train  # no header: the first line is data
    assert cola.iloc[0].text_a.startswith("Our friends won't buy this analysis")
    trec = load_task_data(get_task("trec"), str(small_data)).train
    assert trec.iloc[0].to_dict() == {"text_a": "How did serfdom develop in and then leave Russia ?", "label": 1}
    stsb = load_task_data(get_task("stsb"), str(small_data)).train
    assert stsb.iloc[0].label == 5.0 and stsb.label.dtype == float


def _exact(task, path):
    return pd.DataFrame(read_tsv(path, task), columns=["text_a", "text_b"][: len(task.text_columns)] + ["label"])


@pytest.mark.parametrize("name", ["sst2", "cola", "rte", "stsb"])
def test_the_fast_tsv_reader_reads_what_the_exact_one_does(small_data, name):
    task = get_task(name)
    for file in (task.train_file, task.eval_file):
        path = small_data / task.folder / file
        fast = read_tsv_fast(path, task)
        assert fast is not None, f"{path}: a clean file fell back to the slow reader"
        pd.testing.assert_frame_equal(fast, _exact(task, path))


@pytest.mark.parametrize(
    "content,fast_reads",
    [
        ("sentence\tlabel\r\na b\t1\r\nc\t0\r\n", True),  # CRLF
        ("sentence\tlabel\n\na b\t1\n\nc\t0\n", True),  # blank lines: skipped by both
        ('sentence\tlabel\n"a b\t1\nc "d" \t0.0\n', True),  # quotes are text; 0.0 is class 0
        ("sentence\tlabel\n\t1\nNA\t0\nnull\t1\n", True),  # empty and NA-looking text stays text
        ("sentence\tlabel\n \na\t1\n", False),  # a whitespace-only line: the exact reader's error
        ("\ufeffsentence\tlabel\na\t1\n", False),  # a byte-order mark: the exact reader's header error
        ("sentence\tlabel\na\t1\nb\n", False),
        ("sentence\tlabel\na\t1\tx\n", False),
        ("sentence\tlabel\na\tnan\n", False),
        ("sentence\tlabel\n", False),
        ("\nsentence\tlabel\na\t1\n", False),  # a blank first line: csv's header, so the exact reader refuses it
        ("sentence\tlabel\nx\t1\r \n", False),  # a lone \r ends a line for both readers
        ("sentence\tlabel\n" + "x" * 200_000 + "\t1\n", False),  # over csv's field size limit
        ("cola:src\t1\t\ta\nsrc\t0\t*\n", False),  # a short row whose missing field is text, not the label
        ("cola:src\t1\t\ta\nsrc\t0\t*\tb\n", True),
    ],
)
def test_the_fast_tsv_reader_reads_clean_files_and_leaves_the_rest_to_the_exact_one(tmp_path, content, fast_reads):
    name, _, content = content.rpartition(":") if content.startswith("cola:") else ("sst2", "", content)
    task = get_task(name)
    path = tmp_path / "train.tsv"
    path.write_text(content, encoding="utf-8")
    fast = read_tsv_fast(path, task)
    assert (fast is not None) == fast_reads
    if fast_reads:
        pd.testing.assert_frame_equal(fast, _exact(task, path))


def test_unbalanced_quotes_do_not_merge_rows(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text('sentence\tlabel\n"a quote that never closes\t1\nnext row\t0\n')
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nok\t1\n")
    data = load_task_data(get_task("sst2"), str(tmp_path))
    assert list(data.train.label) == [1, 0]


@pytest.mark.parametrize(
    "content,message",
    [
        ("sentence\tlabel\ngood\t1\nbad row without tab\n", r"train.tsv:3: expected 2 tab-separated fields, found 1"),
        ("sentence\tlabel\ngood\tpositive\n", r"train.tsv:2: label 'positive' is not a number"),
        ("sentence\tlabel\ngood\t7\n", r"train.tsv:2: label '7' is not a class id 0..1"),
        ("text\tlabel\ngood\t1\n", r"train.tsv:1: header lacks column\(s\) sentence"),
    ],
)
def test_malformed_tsv_names_file_and_line(tmp_path, content, message):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text(content)
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nok\t1\n")
    with pytest.raises(PeftbenchError, match=message):
        load_task_data(get_task("sst2"), str(tmp_path))


def test_malformed_jsonl_and_trec(tmp_path):
    (tmp_path / "MRPC").mkdir()
    (tmp_path / "MRPC" / "train.jsonl").write_text('{"sentence1": "a", "sentence2": "b", "label": 1}\n{oops\n')
    (tmp_path / "MRPC" / "validation.jsonl").write_text('{"sentence1": "a", "sentence2": "b", "label": 1}\n')
    with pytest.raises(PeftbenchError, match=r"train.jsonl:2: not valid JSON"):
        load_task_data(get_task("mrpc"), str(tmp_path))
    (tmp_path / "TREC").mkdir()
    (tmp_path / "TREC" / "train_5500.label").write_text("NUM:date When was it ?\nWHAT is this\n")
    (tmp_path / "TREC" / "TREC_10.label").write_text("NUM:date When ?\n")
    with pytest.raises(PeftbenchError, match=r"train_5500.label:2: expected 'COARSE:fine question'"):
        load_task_data(get_task("trec"), str(tmp_path))


def test_missing_data_errors_name_the_task_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("PEFTBENCH_DATA", raising=False)
    with pytest.raises(PeftbenchError, match=r"task rte: --data-dir=.* has no RTE/train.tsv; point --data-dir"):
        load_task_data(get_task("rte"), str(tmp_path))
    monkeypatch.setenv("PEFTBENCH_DATA", str(tmp_path))
    with pytest.raises(PeftbenchError, match=r"PEFTBENCH_DATA=.* has no RTE/train.tsv"):
        load_task_data(get_task("rte"))
    monkeypatch.delenv("PEFTBENCH_DATA")
    with pytest.raises(PeftbenchError, match=r"task rte: no data found .*hub glue/rte skipped: HF_HUB_OFFLINE=1.*--data-dir"):
        load_task_data(get_task("rte"))


# -- metrics on hand-made predictions ------------------------------------------------------
def test_accuracy_and_f1():
    task = get_task("mrpc")
    pred = np.array([1, 1, 0, 0, 1])
    gold = np.array([1, 0, 0, 1, 1])
    scores = task.score(pred, gold)
    assert scores["accuracy"] == pytest.approx(3 / 5)
    # tp=2, fp=1, fn=1 -> precision 2/3, recall 2/3, f1 2/3
    assert scores["f1"] == pytest.approx(2 / 3)
    assert list(scores) == ["accuracy", "f1"]



def test_accuracy_is_scikit_learns():
    from sklearn.metrics import accuracy_score

    accuracy = get_task("trec").score
    rng = np.random.default_rng(0)
    for n in (1, 7, 500):
        pred, gold = rng.integers(0, 6, n), rng.integers(0, 6, n)
        assert accuracy(pred, gold)["accuracy"] == accuracy_score(gold, pred)
    with pytest.raises(Exception, match="shape"):  # the metric's failure, named (a plugin failure)
        accuracy(np.zeros(3, int), np.zeros(4, int))


def test_matthews_correlation():
    task = get_task("cola")
    pred = np.array([1, 1, 0, 0, 1, 0])
    gold = np.array([1, 0, 0, 1, 1, 0])
    tp, tn, fp, fn = 2, 2, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert task.score(pred, gold)["mcc"] == pytest.approx(expected)
    assert task.score(np.ones(6, int), gold)["mcc"] == 0.0  # majority-class predictions


def test_pearson_and_spearman():
    task = get_task("stsb")
    gold = np.array([0.0, 1.0, 2.0, 3.0])
    pred = np.array([0.0, 2.0, 4.0, 7.0])
    scores = task.score(pred, gold)
    xm, ym = pred - pred.mean(), gold - gold.mean()
    assert scores["pearson"] == pytest.approx((xm @ ym) / math.sqrt((xm @ xm) * (ym @ ym)))
    assert scores["spearman"] == pytest.approx(1.0)  # monotone
    assert task.score(np.array([1.0, 1, 1, 1]), gold) == {"pearson": 0.0, "spearman": 0.0}


def test_trec_accuracy_six_classes():
    task = get_task("trec")
    assert task.score(np.array([0, 5, 3, 2]), np.array([0, 5, 3, 1]))["accuracy"] == pytest.approx(0.75)


def test_train_subset_random_and_first():
    from peftbench.data import subset_indices

    first = subset_indices(100, 10, "first", data_seed=7)
    assert first.tolist() == list(range(10))
    a, b = subset_indices(100, 10, "random", 0), subset_indices(100, 10, "random", 0)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 10 and a.tolist() == sorted(a.tolist())
    assert a.tolist() != subset_indices(100, 10, "random", 1).tolist()
    assert a.tolist() != first.tolist()
    assert subset_indices(5, 10, "random", 0).tolist() == list(range(5))
    with pytest.raises(ValueError, match="random or first"):
        subset_indices(100, 10, "last", 0)


def test_held_out_inputs_of_a_generation_task_are_never_trained_on():
    """E2E has several references per input: a search holds out whole inputs, never some of their pairs."""
    from peftbench.data import validation_split

    rng = np.random.default_rng(0)
    groups = [f"mr{i}" for i in rng.integers(0, 40, size=200)]  # 200 pairs over <= 40 inputs
    val, pool, stratified = validation_split(200, 30, seed=3, groups=groups)
    held, trained = {groups[i] for i in val}, {groups[i] for i in pool}
    assert not held & trained and len(val) >= 30 and len(val) + len(pool) == 200 and not stratified
    assert len(val) < 30 + max(groups.count(g) for g in held)  # whole inputs until 30 pairs, not more
    again, _, _ = validation_split(200, 30, seed=3, groups=groups)
    assert again.tolist() == val.tolist()
    assert validation_split(200, 30, seed=4, groups=groups)[0].tolist() != val.tolist()
    with pytest.raises(PeftbenchError, match="leaves no training input"):
        validation_split(200, 199, seed=3, groups=["a"] * 100 + ["b"] * 100)


def test_train_subset_keeps_earlier_run_ids():
    """A field added later is left out of the id at its default, so published records stay valid."""
    from peftbench.records import run_id

    spec = {"method": "lora", "seed": 0, "train_samples": 4000}
    assert run_id(spec) == run_id({**spec, "train_subset": "random"})
    assert run_id(spec) != run_id({**spec, "train_subset": "first"})


def test_hub_data_is_fingerprinted_by_its_content(monkeypatch):
    """A hub dataset can change under the same id (a new revision): the fingerprint that runs compare
    and record hashes what was read, so the same id with other rows is other data."""
    import datasets

    from peftbench import tasks as tasks_mod

    rows = {"sentence": ["a b", "c d"], "label": [0, 1]}
    monkeypatch.delenv("PEFTBENCH_DATA", raising=False)
    monkeypatch.setattr(tasks_mod, "_hub_unreachable", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name: datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(rows) for split in ("train", "validation")}))
    first = load_task_data(get_task("sst2"))
    assert first.source == "hub:glue/sst2" and first.fingerprint.startswith("hub:glue/sst2@")
    assert list(first.train["label"]) == [0, 1] and load_task_data(get_task("sst2")).fingerprint == first.fingerprint
    rows["label"] = [1, 1]
    assert load_task_data(get_task("sst2")).fingerprint != first.fingerprint


def test_the_tokenisation_cache_is_keyed_by_the_code_that_tokenises(monkeypatch):
    """The cache (shared by checkouts) is rebuilt when the tokenising code or libraries
    change, not only the data or the tokenizer: a run never trains on tokens of other code."""
    from peftbench import data, provenance

    built = []

    def build():
        built.append(1)
        return {"input_ids": [[1, 2]], "labels": [0]}

    parts = {"task": "cache-key-test", "data": "x", "split": "train"}
    data.cached(parts, build)
    data.cached(parts, build)
    assert len(built) == 1  # the second call loads
    monkeypatch.setattr(data, "_tokenising_code", lambda: "other-code")
    data.cached(parts, build)
    assert len(built) == 2
    real = provenance.library_versions
    monkeypatch.setattr(provenance, "library_versions", lambda: {**real(), "tokenizers": "0.0.0"})
    data.cached(parts, build)
    assert len(built) == 3
