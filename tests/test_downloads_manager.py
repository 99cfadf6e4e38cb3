"""The download manager against a local HTTP server: progress, resume, checksums, disk full, cancel."""

from __future__ import annotations

import errno
import hashlib
import random
import shutil
import subprocess
import threading
from collections import namedtuple
from pathlib import Path

import pytest

from storyloom.downloads import (
    AccessDeniedError,
    ChecksumError,
    DiskFullError,
    DownloadCancelledError,
    DownloadError,
    DownloadManager,
    DownloadPlan,
    RemoteFile,
)
from storyloom.downloads import manager as manager_module
from storyloom.downloads import transfer as transfer_module

CHUNK = 64 * 1024
BIG = random.Random(0).randbytes(1024 * 1024 + 123)
CONFIG = b'{"model_type": "llama", "hidden_size": 64}\n'
Usage = namedtuple("Usage", "total used free")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def manager():
    with DownloadManager(chunk_size=CHUNK, max_retries=2, retry_delay_s=0.0) as m:
        yield m


def serve_model(hub) -> DownloadPlan:
    hub.files["/m/model.safetensors"] = BIG
    hub.files["/m/config.json"] = CONFIG
    return DownloadPlan(
        "tiny model",
        (
            RemoteFile("model.safetensors", hub.url("/m/model.safetensors"), len(BIG), sha256=sha256(BIG)),
            RemoteFile("config.json", hub.url("/m/config.json"), len(CONFIG), sha256=sha256(CONFIG)),
        ),
    )


def test_download_reports_progress_and_writes_verified_files(hub, manager, tmp_path):
    plan = serve_model(hub)
    reports = []
    paths = manager.download(plan, tmp_path / "models", on_progress=reports.append)

    assert paths == [tmp_path / "models" / "model.safetensors", tmp_path / "models" / "config.json"]
    assert paths[0].read_bytes() == BIG and paths[1].read_bytes() == CONFIG
    assert not list((tmp_path / "models").glob("*.part"))
    done = [r.bytes_done for r in reports]
    assert done == sorted(done) and done[-1] == plan.total_bytes == len(BIG) + len(CONFIG)
    assert all(r.bytes_total == plan.total_bytes and r.speed_bps >= 0 for r in reports)
    big_reports = [r for r in reports if r.file == "model.safetensors"]
    assert len(big_reports) == -(-len(BIG) // CHUNK)
    assert big_reports[-1].file_bytes_done == big_reports[-1].file_bytes_total == len(BIG)
    assert reports[-1].fraction == 1.0


def test_sizes_come_from_head_before_downloading(hub, manager):
    serve_model(hub)
    plan = manager.plan_urls(
        "tiny",
        {"model.safetensors": hub.url("/m/model.safetensors"), "config.json": hub.url("/m/config.json")},
    )
    assert [f.size for f in plan.files] == [len(BIG), len(CONFIG)]
    assert plan.total_bytes == len(BIG) + len(CONFIG)
    assert "2 files" in plan.describe() and "model.safetensors" in plan.describe()
    assert {r.method for r in hub.requests} == {"HEAD"}


def test_cut_connection_resumes_with_range(hub, manager, tmp_path):
    plan = serve_model(hub)
    hub.cut_once.add("/m/model.safetensors")
    manager.download(plan, tmp_path)

    assert (tmp_path / "model.safetensors").read_bytes() == BIG
    gets = hub.gets("/m/model.safetensors")
    assert len(gets) == 2 and gets[0].range is None
    resumed_at = int(gets[1].range.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at < len(BIG)


def test_cancel_keeps_the_part_file_and_the_next_run_resumes(hub, manager, tmp_path):
    plan = serve_model(hub)
    cancel = threading.Event()

    def cancel_after_four_chunks(progress):
        if progress.file_bytes_done >= 4 * CHUNK:
            cancel.set()

    with pytest.raises(DownloadCancelledError, match=r"model\.safetensors: download cancelled"):
        manager.download(plan, tmp_path, on_progress=cancel_after_four_chunks, cancel=cancel)
    part = tmp_path / "model.safetensors.part"
    assert part.read_bytes() == BIG[: 4 * CHUNK]
    assert not (tmp_path / "model.safetensors").exists()

    reports = []
    manager.download(plan, tmp_path, on_progress=reports.append)
    assert (tmp_path / "model.safetensors").read_bytes() == BIG and not part.exists()
    assert hub.gets("/m/model.safetensors")[-1].range == f"bytes={4 * CHUNK}-"
    assert reports[0].file_bytes_done == 5 * CHUNK


def test_server_ignoring_range_restarts_the_file(hub, manager, tmp_path):
    plan = serve_model(hub)
    (tmp_path / "model.safetensors.part").write_bytes(BIG[:1000])
    hub.ignore_range = True
    manager.download(plan, tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == BIG


def test_finished_files_are_not_fetched_again(hub, manager, tmp_path):
    plan = serve_model(hub)
    manager.download(plan, tmp_path)
    count = len(hub.requests)
    manager.download(plan, tmp_path)
    assert len(hub.requests) == count


def test_checksum_mismatch_deletes_the_file_and_names_it(hub, manager, tmp_path):
    hub.files["/m/model.safetensors"] = BIG
    wrong = sha256(b"something else")
    plan = DownloadPlan(
        "tiny", (RemoteFile("model.safetensors", hub.url("/m/model.safetensors"), len(BIG), sha256=wrong),)
    )
    with pytest.raises(ChecksumError, match=r"model\.safetensors: sha256 mismatch") as info:
        manager.download(plan, tmp_path)
    assert info.value.expected == wrong and info.value.actual == sha256(BIG)
    assert list(tmp_path.iterdir()) == []


def test_size_mismatch_is_refused(hub, manager, tmp_path):
    hub.files["/m/model.safetensors"] = BIG
    plan = DownloadPlan("tiny", (RemoteFile("model.safetensors", hub.url("/m/model.safetensors"), len(BIG) - 10),))
    with pytest.raises(ChecksumError, match="size mismatch"):
        manager.download(plan, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_git_blob_ids_of_small_files_are_checked(hub, manager, tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed: it computes the reference blob id")
    hub.files["/m/config.json"] = CONFIG
    blob_id = (
        subprocess.run(["git", "hash-object", "--stdin"], input=CONFIG, capture_output=True, check=True)
        .stdout.decode()
        .strip()
    )
    good = RemoteFile("config.json", hub.url("/m/config.json"), len(CONFIG), git_sha1=blob_id)
    manager.download(DownloadPlan("ok", (good,)), tmp_path / "a")
    assert (tmp_path / "a" / "config.json").read_bytes() == CONFIG

    bad = RemoteFile("config.json", good.url, len(CONFIG), git_sha1="0" * 40)
    with pytest.raises(ChecksumError, match="git blob sha1 mismatch"):
        manager.download(DownloadPlan("bad", (bad,)), tmp_path / "b")


def test_not_enough_space_is_found_before_downloading(hub, manager, tmp_path, monkeypatch):
    plan = serve_model(hub)
    monkeypatch.setattr(manager_module.shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - 5000, 5000))
    with pytest.raises(DiskFullError, match="not enough disk space") as info:
        manager.download(plan, tmp_path / "models")
    assert info.value.needed_bytes == plan.total_bytes and info.value.free_bytes == 5000
    assert hub.requests == []


def test_space_check_counts_only_what_is_missing(hub, manager, tmp_path):
    plan = serve_model(hub)
    (tmp_path / "model.safetensors.part").write_bytes(BIG[:1000])
    (tmp_path / "config.json").write_bytes(CONFIG)
    assert manager.missing_bytes(plan, tmp_path) == len(BIG) - 1000


def test_disk_full_while_writing_is_a_clear_error(hub, manager, tmp_path, monkeypatch):
    plan = serve_model(hub)

    class FullDisk:
        def __init__(self, file):
            self.file = file
            self.writes = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.writes += 1
            if self.writes > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(data)

    monkeypatch.setattr(transfer_module, "open", lambda path, mode: FullDisk(open(path, mode)), raising=False)  # noqa: SIM115
    with pytest.raises(DiskFullError, match=r"disk filled up while writing model\.safetensors"):
        manager.download(plan, tmp_path)
    assert (tmp_path / "model.safetensors.part").read_bytes() == BIG[: 2 * CHUNK]


def test_access_refused_shows_the_plan_hint(hub, manager, tmp_path):
    plan = serve_model(hub)
    hub.gated["/m/"] = {"secret"}
    plan = DownloadPlan(plan.name, plan.files, access_hint="Accept the license first.")
    with pytest.raises(AccessDeniedError, match=r"access refused \(HTTP 401\)\. Accept the license first\.") as info:
        manager.download(plan, tmp_path)
    assert info.value.status == 401

    authorised = DownloadPlan(plan.name, plan.files, headers={"Authorization": "Bearer secret"})
    manager.download(authorised, tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == BIG
    assert "secret" not in repr(authorised)


def test_failing_server_is_retried_a_bounded_number_of_times(hub, manager, tmp_path):
    plan = serve_model(hub)
    hub.fail_status["/m/model.safetensors"] = 503
    with pytest.raises(DownloadError, match="failed 3 times in a row"):
        manager.download(plan, tmp_path)
    assert len(hub.gets("/m/model.safetensors")) == 3


def test_missing_file_is_named(hub, manager, tmp_path):
    plan = DownloadPlan("x", (RemoteFile("gone.json", hub.url("/gone.json"), 10),))
    with pytest.raises(DownloadError, match=r"gone\.json: HTTP 404"):
        manager.download(plan, tmp_path)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("pytorch_model.bin", "only safetensors"),
        ("original/consolidated.00.pth", "only safetensors"),
        ("model.ckpt", "only safetensors"),
        ("../escape.json", "unsafe file path"),
        ("/etc/passwd.json", "unsafe file path"),
    ],
)
def test_unsafe_files_are_refused(path, reason):
    with pytest.raises(DownloadError, match=reason):
        RemoteFile(path, "http://127.0.0.1/x", 1)


def test_plan_rejects_duplicates_and_empty_lists():
    one = RemoteFile("a.json", "http://127.0.0.1/a", 1)
    with pytest.raises(DownloadError, match=r"listed twice: a\.json"):
        DownloadPlan("x", (one, one))
    with pytest.raises(DownloadError, match="nothing to download"):
        DownloadPlan("x", ())


def test_final_file_appears_only_complete(hub, manager, tmp_path):
    plan = serve_model(hub)
    seen_final = []

    def watch(progress):
        seen_final.append((tmp_path / "model.safetensors").exists())

    manager.download(plan, tmp_path, on_progress=watch)
    assert not any(seen_final[: -(-len(BIG) // CHUNK)])
    assert Path(tmp_path / "model.safetensors").stat().st_size == len(BIG)


def test_cancel_before_a_retry_stops_without_another_request(hub, tmp_path):
    plan = serve_model(hub)
    hub.fail_status["/m/model.safetensors"] = 503
    cancel = threading.Event()
    cancel.set()
    with DownloadManager(max_retries=5, retry_delay_s=0.0) as manager, pytest.raises(DownloadCancelledError):
        manager.download(plan, tmp_path, cancel=cancel)
    assert hub.gets("/m/model.safetensors") == []
