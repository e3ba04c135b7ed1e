"""publish_once: the first complete file wins, concurrent writers never see half a file."""

from __future__ import annotations

import json
import multiprocessing as mp
import os

from synthpos.atomic import publish_once


def test_first_writer_wins_and_no_temporary_file_is_left(tmp_path) -> None:
    path = tmp_path / "manifest.json"
    assert publish_once(path, "first") is True
    assert publish_once(path, "second") is False
    assert path.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_without_hard_links_the_last_writer_wins_atomically(tmp_path, monkeypatch) -> None:
    def no_links(src, dst):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "fit.json"
    assert publish_once(path, "a") and publish_once(path, "b")
    assert path.read_text() == "b"
    assert [p.name for p in tmp_path.iterdir()] == ["fit.json"]


def _publish(path: str, text: str, start, won) -> None:
    start.wait()
    won.put(publish_once(path, text))


def test_racing_processes_agree_on_one_complete_file(tmp_path) -> None:
    path = tmp_path / "manifest.json"
    texts = [json.dumps({"writer": i, "pad": "x" * 200_000}) for i in range(4)]
    ctx = mp.get_context("spawn")
    start, won = ctx.Barrier(len(texts)), ctx.Queue()
    procs = [ctx.Process(target=_publish, args=(str(path), t, start, won)) for t in texts]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * len(texts)
    results = [won.get(timeout=5) for _ in texts]
    assert results.count(True) == 1
    assert path.read_text() in texts  # one writer's whole file
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
