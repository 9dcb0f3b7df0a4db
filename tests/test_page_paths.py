"""The page may choose a run database only inside the runs folder: each kind of refused path."""

from pathlib import Path

import pytest

from training.page_paths import page_database_path, runs_folder


@pytest.fixture
def folder(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.chdir(tmp_path)
    return runs


def test_a_file_in_the_folder_is_accepted_absolute_or_relative(folder):
    assert page_database_path(str(folder / "demo.db"), folder) == folder / "demo.db"
    assert page_database_path("runs/demo.db", folder) == folder / "demo.db"
    assert page_database_path("  runs/sub/demo.db ", folder) == folder / "sub" / "demo.db"


def test_the_folder_is_that_of_clipwatch_db(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPWATCH_DB", str(tmp_path / "elsewhere" / "main.db"))
    assert runs_folder() == tmp_path / "elsewhere"
    assert page_database_path(str(tmp_path / "elsewhere" / "b.db")) == tmp_path / "elsewhere" / "b.db"
    with pytest.raises(ValueError, match="outside"):
        page_database_path(str(tmp_path / "b.db"))
    monkeypatch.delenv("CLIPWATCH_DB")
    assert runs_folder() == Path("runs")  # the default: runs/ under the working directory


@pytest.mark.parametrize("text", ["/etc/passwd", "/tmp/clipwatch.db", "other.db", "~/clipwatch.db"])
def test_a_path_outside_the_folder_is_refused(folder, text):
    with pytest.raises(ValueError, match=f"it is outside that folder. Received: path={text!r}"):
        page_database_path(text, folder)


@pytest.mark.parametrize("text", ["runs/../runs/demo.db", "runs/../../x.db", "../x.db", "runs/a/../demo.db"])
def test_dot_dot_is_refused_even_when_it_comes_back_inside(folder, text):
    with pytest.raises(ValueError, match=r"'\.\.' is not allowed. Received: path="):
        page_database_path(text, folder)


def test_a_symbolic_link_that_leaves_the_folder_is_refused(folder, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "escape").symlink_to(outside)
    (folder / "escape.db").symlink_to(tmp_path / "target.db")
    for text in ("runs/escape/demo.db", "runs/escape.db", str(folder / "escape.db")):
        with pytest.raises(ValueError, match="a symbolic link leads outside it"):
            page_database_path(text, folder)
    (folder / "inside").symlink_to(folder / "real")  # a link that stays inside is fine
    assert page_database_path("runs/inside/demo.db", folder) == folder / "real" / "demo.db"


def test_a_symbolic_link_loop_is_refused(folder):
    (folder / "loop").symlink_to(folder / "loop")
    with pytest.raises(ValueError, match="runs/loop/x.db"):
        page_database_path("runs/loop/x.db", folder)


@pytest.mark.parametrize("text", [None, 3, b"runs/x.db", "", "   ", "runs/a\x00.db"])
def test_no_text_empty_text_or_a_nul_is_refused(folder, text):
    with pytest.raises(ValueError, match=f"Received: path={text!r}".replace("\\", "\\\\")):
        page_database_path(text, folder)


def test_the_folder_itself_is_refused(folder):
    with pytest.raises(ValueError, match="the folder itself"):
        page_database_path("runs", folder)
