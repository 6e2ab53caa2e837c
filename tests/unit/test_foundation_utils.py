import os

import pytest

from speechssl.data.tables import read_table, write_table
from speechssl.errors import ConfigError, DataDirError
from speechssl.registry import Registry
from speechssl.utils.atomic import atomic_dir, atomic_open


def test_atomic_open_keeps_old_file_on_error(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(p) as fh:
        fh.write("new")
        raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_atomic_dir_replaces(tmp_path):
    d = tmp_path / "out"
    with atomic_dir(d) as t:
        (t / "a").write_text("1")
    with atomic_dir(d, overwrite=True) as t:
        (t / "b").write_text("2")
    assert sorted(os.listdir(d)) == ["b"]
    with pytest.raises(FileExistsError), atomic_dir(d):
        pass


def test_tables_c_sorted_and_duplicates(tmp_path):
    p = tmp_path / "utt2spk"
    write_table(p, {"b": "s1", "B": "s2", "a-1": "s1", "a_1": "s3"})
    assert p.read_text().splitlines() == ["B s2", "a-1 s1", "a_1 s3", "b s1"]
    assert read_table(p)["a_1"] == "s3"
    p.write_text("a x\na y\n")
    with pytest.raises(DataDirError, match=r"a .*utt2spk:2.*duplicate key"):
        read_table(p)


def test_registry_unknown_name_lists_known():
    r: Registry[int] = Registry("model")
    r.add("hubert_tiny", 1)
    with pytest.raises(ConfigError, match="unknown model 'x'; known: hubert_tiny"):
        r.get("x")
