import pyarrow.parquet as pq
import pytest

from maas.data.source import bootstrap_sklearn, filesystem_for, fingerprint_files, resolve_files
from maas.exceptions import DataError


def test_bootstrap_writes_the_bundled_set(tmp_path):
    path = tmp_path / "d" / "digits.parquet"
    bootstrap_sklearn("sklearn:digits", str(path))
    table = pq.read_table(path)
    assert table.num_rows == 1797 and table.num_columns == 65 and "target" in table.column_names


def test_resolve_file_dir_glob_and_errors(tmp_path):
    for name in ("a.csv", "b.csv", "notes.txt"):
        (tmp_path / name).write_text("x,y\n1,2\n")
    _, files, fmt = resolve_files(str(tmp_path / "a.csv"), "auto")
    assert fmt == "csv" and files[0].endswith("a.csv")
    _, files, fmt = resolve_files(str(tmp_path / "*.csv"), "auto")
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.csv", "b.csv"]
    _, files, _ = resolve_files(str(tmp_path), "csv")
    assert len(files) == 2  # notes.txt is skipped when the format is known
    with pytest.raises(DataError, match="cannot tell the format"):
        resolve_files(str(tmp_path), "auto")
    with pytest.raises(DataError, match="does not exist"):
        resolve_files(str(tmp_path / "missing.parquet"), "auto")
    with pytest.raises(DataError, match="no data files match"):
        resolve_files(str(tmp_path / "*.parquet"), "auto")


def test_fingerprint_follows_content_and_settings(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("x\n1\n")
    fs, _ = filesystem_for(str(tmp_path))
    a = fingerprint_files(fs, [str(f)], {"label": "x"})
    assert a == fingerprint_files(fs, [str(f)], {"label": "x"})
    assert a != fingerprint_files(fs, [str(f)], {"label": "y"})
    f.write_text("x\n2\n")
    assert a != fingerprint_files(fs, [str(f)], {"label": "x"})
