import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from maas.data import prepare_data
from maas.data.accounting import REASON
from maas.exceptions import DataError
from maas.spec import DataSpec

pytestmark = pytest.mark.usefixtures("ray_session")


def _footer_readers() -> int:
    """Ray Data's Parquet footer-reader actors ever started in this Ray (dead ones stay in the GCS table)."""
    from ray._private import state

    return sum(a["ActorClassName"] == "FooterReader" for a in state.actors().values())


def test_digits_split_counts_normalisation_and_report(digits_parquet, tmp_path):
    spec = DataSpec(path=digits_parquet, label="target")
    footer_readers = _footer_readers()
    r = prepare_data(spec, str(tmp_path / "run"))
    x_train, _ = r.numpy("train")
    # maas reads Parquet with Ray Data's V1 datasource: Ray 2.60's default starts 32 footer-reader actors a read
    assert _footer_readers() == footer_readers
    c = r.counts
    assert c["rows_in"] == 1797 and c["rows_rejected"] == 0
    assert sum(c["splits"].values()) == c["rows_ok"] == 1797
    assert 0.65 < c["splits"]["train"] / 1797 < 0.75
    assert r.classes == list(range(10)) and len(r.features) == 64
    np.testing.assert_allclose(r.mean, x_train.mean(0), rtol=1e-4, atol=1e-4)  # fitted on train only
    std = x_train.std(0)
    np.testing.assert_allclose([s for s, t in zip(r.std, std) if t > 1e-6], std[std > 1e-6], rtol=1e-3)
    assert all(s == 1.0 for s, t in zip(r.std, std) if t <= 1e-6)  # constant pixels left unscaled
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["fingerprint"] == r.fingerprint and report["counts"]["rows_in"] == 1797


def test_split_is_deterministic_and_depends_on_the_seed(digits_parquet, tmp_path):
    spec = DataSpec(path=digits_parquet, label="target")
    a = prepare_data(spec, str(tmp_path / "a"))
    b = prepare_data(spec, str(tmp_path / "b"))
    xa, ya = a.numpy("test")
    xb, yb = b.numpy("test")
    key = lambda x, y: sorted(map(tuple, np.c_[x, y].tolist()))  # noqa: E731
    assert key(xa, ya) == key(xb, yb) and a.fingerprint == b.fingerprint
    c = prepare_data(DataSpec(path=digits_parquet, label="target", split={"seed": 7}), str(tmp_path / "c"))
    xc, yc = c.numpy("test")
    assert key(xa, ya) != key(xc, yc)
    assert c.fingerprint != a.fingerprint


def _csv_with_bad_rows(path, n_good=200):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"f1": rng.normal(size=n_good).round(4).astype(object), "f2": rng.normal(size=n_good),
                       "label": rng.integers(0, 2, n_good)})
    df.loc[3, "f1"] = "oops"         # not numeric
    df.loc[5, "f2"] = np.nan         # null
    df.loc[7, "f2"] = np.inf         # infinite
    df["label"] = df["label"].astype("Int64")
    df.loc[9, "label"] = pd.NA       # null label
    df.to_csv(path, index=False)
    return df


def test_bad_rows_are_quarantined_with_reasons_and_counted(tmp_path):
    src = tmp_path / "in.csv"
    _csv_with_bad_rows(src)
    r = prepare_data(DataSpec(path=str(src), label="label", max_reject_fraction=0.05), str(tmp_path / "run"))
    c = r.counts
    assert c["rows_in"] == 200 and c["rows_rejected"] == 4 and c["rows_ok"] == 196
    assert sum(c["splits"].values()) == 196
    rejects = pq.read_table(r.rejects_path).to_pandas()
    assert len(rejects) == 4
    reasons = set(rejects[REASON])
    assert reasons == {"column 'f1' is not numeric", "column 'f2' is null", "column 'f2' is infinite",
                       "label 'label' is null"}
    raw = [json.loads(x) for x in rejects["__raw"]]
    assert any(row["f1"] == "oops" for row in raw)  # the original row is kept, not just the reason


def test_too_many_rejects_fail_the_stage_naming_the_threshold(tmp_path):
    src = tmp_path / "in.csv"
    _csv_with_bad_rows(src, n_good=40)
    with pytest.raises(DataError, match="max_reject_fraction=0.01.*Most common"):
        prepare_data(DataSpec(path=str(src), label="label", max_reject_fraction=0.01), str(tmp_path / "run"))


def test_missing_column_and_missing_file_are_named(digits_parquet, tmp_path):
    with pytest.raises(DataError, match="data.label: column 'targt' not found.*did you mean 'target'"):
        prepare_data(DataSpec(path=digits_parquet, label="targt"), str(tmp_path / "r"))
    with pytest.raises(DataError, match="does not exist"):
        prepare_data(DataSpec(path=str(tmp_path / "nope.parquet"), label="y"), str(tmp_path / "r"))


def test_empty_and_corrupt_inputs_give_clear_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("f1,label\n")
    with pytest.raises(DataError, match="no rows|cannot read"):
        prepare_data(DataSpec(path=str(empty), label="label"), str(tmp_path / "r"))
    corrupt = tmp_path / "bad.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="bad.parquet"):
        prepare_data(DataSpec(path=str(corrupt), label="label"), str(tmp_path / "r"))


def test_a_single_parquet_file_is_read_by_parallel_tasks_row_group_runs(tmp_path):
    """One big file must not put the whole data stage on one core: its row groups are dealt into runs read
    by separate tasks (a block per row group), and every row arrives exactly once."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    from maas.data.readers import read_parquet_parallel

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": np.arange(8000), "b": rng.normal(size=8000), "c": rng.choice(["x", "y"], 8000)})
    path = str(tmp_path / "one.parquet")
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=1000)
    fs = pafs.LocalFileSystem()
    ds = read_parquet_parallel([path], fs, tasks=4)
    blocks = ds.materialize()
    # 4 read tasks of 2 row groups each (Ray's own reader: 1 block from 1 task); row groups this small are
    # coalesced into one block per task, large ones give one block each
    assert blocks.num_blocks() >= 4
    got = blocks.to_pandas().sort_values("a").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, df, check_dtype=False)  # Ray hands back Arrow-backed dtypes
    # a folder of many files, or hive-style key=value folders, keeps Ray's own reader
    hive = tmp_path / "c=x"
    hive.mkdir()
    pq.write_table(pa.Table.from_pandas(df[["a"]], preserve_index=False), str(hive / "p.parquet"),
                   row_group_size=1000)
    assert "c" in read_parquet_parallel([str(hive / "p.parquet")], fs, tasks=4).schema().names
