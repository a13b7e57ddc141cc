"""Sync URLs a learner actually has (issue 10 §4): a typo is an error that names what exists, a
single object is copied, and the https links a browser shows are accepted. The real CLI, engine
and google-cloud-storage listing against the GCS stand-in (tests/fakes/gcs_server.py)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from gcpdl.cli.app import cli
from gcpdl.sync.url import GcsUrl, parse_gs_url
from tests.helpers import tree


def sync(*args: str):
    return CliRunner().invoke(cli, ["sync", *args, "--local", "--retry-base", "0.005"])


@pytest.fixture
def dset(gcs):
    gcs.create_bucket("dset", public=True)
    gcs.put_many("dset", {
        "train/a.jpg": b"a" * 100, "train/b.jpg": b"b" * 100, "test/c.jpg": b"c" * 10, "valid/d.jpg": b"d",
        "kaggle/train.zip": b"zip" * 1000, "kaggle/train.zip.sha256": b"sum", "kaggle/test.zip": b"t",
        "README.md": b"# hi",
    })
    return gcs


def media(gcs) -> int:
    return gcs.counters().get("kind:media", 0)


def test_a_typo_is_an_error_naming_the_closest_folders(dset, tmp_path):
    r = sync("gs://dset/trian", str(tmp_path / "o"))
    assert r.exit_code == 1, r.output
    assert r.stderr.strip() == "Error: No object or folder matches gs://dset/trian. Did you mean gs://dset/train/?"
    assert not (tmp_path / "o").exists() and media(dset) == 0


def test_a_typo_deeper_down_walks_up_to_a_folder_that_exists(dset, tmp_path):
    r = sync("gs://dset/kagle/train.zip", str(tmp_path / "o"))
    assert r.exit_code == 1
    assert r.stderr.strip() == "Error: No object or folder matches gs://dset/kagle/train.zip. Did you mean gs://dset/kaggle/?"


def test_nothing_close_lists_what_is_there(dset, tmp_path):
    r = sync("gs://dset/kaggle/zzzzzz", str(tmp_path / "o"))
    assert r.exit_code == 1
    assert r.stderr.strip() == (
        "Error: No object or folder matches gs://dset/kaggle/zzzzzz. "
        "gs://dset/kaggle/ holds: test.zip, train.zip, train.zip.sha256"
    )


def test_an_empty_bucket_says_so(gcs, tmp_path):
    gcs.create_bucket("void", public=True)
    r = sync("gs://void/x", str(tmp_path / "o"))
    assert r.exit_code == 1
    assert r.stderr.strip() == "Error: No object or folder matches gs://void/x: gs://void is empty."


def test_a_single_object_is_copied_into_dest(dset, tmp_path):
    dest = tmp_path / "data"
    r = sync("gs://dset/kaggle/train.zip", str(dest), "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert (s["files"], s["source"]) == (1, "gs://dset/kaggle/train.zip")
    assert tree(dest) == {"train.zip": b"zip" * 1000}  # not train.zip.sha256, which shares the prefix
    again = json.loads(sync("gs://dset/kaggle/train.zip", str(dest), "--json").stdout)
    assert (again["files"], again["skipped"]) == (0, 1)


def test_a_single_object_to_its_own_name_or_the_default_dest(dset, tmp_path, monkeypatch):
    """DEST naming the file itself (what `sync --on VM` passes: /data/train.zip) puts it there,
    the first time and on a re-run, and so does the default DEST of --local."""
    r = sync("gs://dset/kaggle/train.zip", str(tmp_path / "train.zip"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "train.zip").read_bytes() == b"zip" * 1000
    r = sync("gs://dset/kaggle/train.zip", str(tmp_path / "train.zip"), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["skipped"] == 1
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert sync("gs://dset/README.md").exit_code == 0
    assert (work / "README.md").read_bytes() == b"# hi"


def test_delete_with_a_single_object_is_refused(dset, tmp_path):
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    r = sync("gs://dset/kaggle/train.zip", str(dest), "--delete")
    assert r.exit_code == 2
    assert r.stderr.strip() == (
        "Error: gs://dset/kaggle/train.zip is one object, not a folder: --delete would empty DEST around it. "
        "Drop --delete, or sync the folder that holds it."
    )
    assert (dest / "mine.txt").read_text() == "keep me" and sorted(p.name for p in dest.iterdir()) == ["mine.txt"]


@pytest.mark.parametrize("url, bucket, prefix", [
    ("https://storage.googleapis.com/dset/train", "dset", "train/"),
    ("https://storage.cloud.google.com/dset/kaggle/train.zip", "dset", "kaggle/train.zip/"),
    ("https://console.cloud.google.com/storage/browser/dset/train?project=my-proj", "dset", "train/"),
    ("https://console.cloud.google.com/storage/browser/dset;tab=objects?project=p&prefix=&forceOnObjectsSortingFiltering=false", "dset", ""),
    ("https://console.cloud.google.com/storage/browser/dset;tab=objects?prefix=train/&project=p", "dset", "train/"),
    ("https://console.cloud.google.com/storage/browser/_details/dset/kaggle/train.zip;tab=live_object?project=p", "dset", "kaggle/train.zip/"),
    ("https://storage.googleapis.com/dset/with%20space/x", "dset", "with space/x/"),
    ("gs://dset/train", "dset", "train/"),
])
def test_browser_links_parse(url, bucket, prefix):
    assert parse_gs_url(url) == GcsUrl(bucket, prefix)


def test_other_https_links_are_refused():
    from gcpdl.errors import InvalidInput

    with pytest.raises(InvalidInput) as e:
        parse_gs_url("https://example.com/dset/train")
    assert e.value.message == (
        "'https://example.com/dset/train' is not a Cloud Storage link. "
        "Use gs://BUCKET/PATH, https://storage.googleapis.com/BUCKET/PATH or a Cloud Console bucket link."
    )


@pytest.mark.parametrize("url", [
    "https://storage.googleapis.com/dset/train",
    "https://console.cloud.google.com/storage/browser/dset/train?project=my-proj",
])
def test_https_links_sync_end_to_end(dset, tmp_path, url):
    r = sync(url, str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    assert tree(tmp_path / "o") == {"a.jpg": b"a" * 100, "b.jpg": b"b" * 100}


def test_console_object_page_syncs_the_object(dset, tmp_path):
    url = "https://console.cloud.google.com/storage/browser/_details/dset/kaggle/train.zip;tab=live_object?project=p"
    r = sync(url, str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    assert tree(tmp_path / "o") == {"train.zip": b"zip" * 1000}
