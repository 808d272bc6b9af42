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


@pytest.mark.parametrize("where", ["local", "s3"])
def test_reports_land_in_the_run_folder_local_or_in_a_bucket(where, tmp_path, request):
    """What the pipelines write next to a run (compression reports, evaluation tokens) goes through the run
    folder's own filesystem: a bucket's run folder gets the files, and no local folder named after the URI."""
    import os

    from maas.storage import open_uri, put_bytes, put_folder_files

    run_dir = str(tmp_path / "runs" / "r1") if where == "local" else \
        f"{request.getfixturevalue('s3_bucket')}/maas/runs/r1"
    local = tmp_path / "written"
    local.mkdir()
    (local / "compression_report.json").write_text('{"picked": "m/2"}')
    (local / "compression_report.png").write_bytes(b"\x89PNG" + bytes(range(256)))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        report = put_folder_files(run_dir, {"json": str(local / "compression_report.json"),
                                            "png": str(local / "compression_report.png")})
        assert put_bytes(run_dir, "compress_eval.json", b"[1, 2]") == f"{run_dir}/compress_eval.json"
    finally:
        os.chdir(cwd)
    assert report == {"json": f"{run_dir}/compression_report.json", "png": f"{run_dir}/compression_report.png"}
    fs, path = open_uri(run_dir)
    for name, want in (("compression_report.json", b'{"picked": "m/2"}'), ("compress_eval.json", b"[1, 2]"),
                       ("compression_report.png", b"\x89PNG" + bytes(range(256)))):
        with fs.open_input_stream(f"{path}/{name}") as f:
            assert f.read() == want
    assert not (tmp_path / "s3:").exists()


def test_a_missing_local_data_path_is_refused_before_ray_starts(tmp_path, monkeypatch):
    """`maas run` checks a local data.path before it starts an embedded Ray (which took 13 s to reach the same
    error); paths something will write (data.bootstrap), globs and object storage are left to the data stage."""
    from types import SimpleNamespace as Data

    from maas.data.source import check_local_path

    (tmp_path / "here.csv").write_text("a\n1\n")
    monkeypatch.setenv("HOME", str(tmp_path))  # ~ is expanded as the data stage expands it
    for path in ("missing.parquet", str(tmp_path / "nope"), f"file://{tmp_path}/nope.csv"):
        with pytest.raises(DataError, match=r"^data\.path: .* does not exist \(check the path"):
            check_local_path(Data(path=path, bootstrap=None))
    for data in (Data(path=str(tmp_path / "here.csv"), bootstrap=None), Data(path=str(tmp_path), bootstrap=None),
                 Data(path=f"file://{tmp_path}/here.csv", bootstrap=None), Data(path="~/here.csv", bootstrap=None),
                 Data(path="data/digits.parquet", bootstrap="sklearn:digits"), Data(path="s3://b/x.csv"),
                 Data(path=str(tmp_path / "*.csv")), Data(source="sklearn"), None):
        check_local_path(data)
