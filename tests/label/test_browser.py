"""The annotation web app in a real browser: label with the keyboard, kill the server, restart, nothing lost.

The server runs as a separate process (`lmforge label serve`) so the test can SIGKILL it the way a
crash or a power cut would; answers must already be on disk because every request fsyncs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lmforge.tasks.builtin import load_task

READY_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as res:
        return json.loads(res.read())


def start_server(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`lmforge label serve ...` on a free port, polled until /healthz answers (bounded wait)."""
    port = free_port()
    log = open(tmp_path / f"server-{port}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "lmforge.cli.main", "label", "serve", *args, "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.close()
            pytest.fail(f"the server exited with {proc.returncode}: {(tmp_path / f'server-{port}.log').read_text()}")
        try:
            get_json(base + "/healthz")
            return proc, base
        except OSError:
            time.sleep(0.1)
    kill(proc)
    pytest.fail(f"the server was not ready within {READY_TIMEOUT:.0f} s")


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the server's whole process group: no shutdown handler runs, like a crash."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture
def reviews(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """14 real Chinese reviews as items to label; the true labels stay with the test."""
    task = load_task("zh_sentiment", max_per_class=9)
    rows = task.train[:14]
    path = tmp_path / "reviews.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": e.text}, ensure_ascii=False) + "\n"
                            for i, e in enumerate(rows)), encoding="utf-8")
    return path, {f"r{i}": e.label for i, e in enumerate(rows)}


def press_and_wait(page, key: str, before: str) -> str:
    """Press a key that saves and moves on; return the item id now on screen."""
    page.keyboard.press(key)
    page.wait_for_function("(b) => document.body.dataset.ready === '1' && "
                           "document.querySelector('#item') && document.querySelector('#item').dataset.item !== b",
                           arg=before, timeout=15_000)
    return page.locator("#item").get_attribute("data-item")


def test_ten_items_labelled_by_keyboard_survive_a_kill_and_restart(browser, reviews, tmp_path):
    items, truth = reviews
    answers = tmp_path / "answers.jsonl"
    args = (str(items), "--out", str(answers), "--labels", "neg,pos", "--annotator", "tester")
    proc, base = start_server(tmp_path, *args)
    page = browser.new_page()
    pressed: dict[str, str] = {}
    try:
        page.goto(base + "/")
        page.wait_for_function("document.body.dataset.ready === '1'")
        assert page.evaluate("document.fonts.check('20px \"Noto Sans CJK SC\"')"), "no CJK font for Chinese text"
        current = page.locator("#item").get_attribute("data-item")
        for n in range(10):
            if n == 3:
                # a Chinese comment typed as an IME commits it; keys typed into the box are text, not shortcuts
                page.keyboard.press("c")
                page.keyboard.insert_text("很满意，推荐")
                page.keyboard.press("2")
                assert page.locator("#item").get_attribute("data-item") == current
                assert page.input_value("#comment") == "很满意，推荐2"
                page.screenshot(path=str(tmp_path / "label-ui.png"), full_page=True)
                page.keyboard.press("Escape")
            if n == 5:
                # a key that an input method is still composing (pinyin → 汉字) is not a shortcut
                page.evaluate("document.body.dispatchEvent(new KeyboardEvent('keydown', "
                              "{key: '2', isComposing: true, bubbles: true}))")
                page.wait_for_timeout(300)
                assert page.locator("#item").get_attribute("data-item") == current
                assert get_json(base + "/api/state")["answered"] == 5
            label = truth[current]
            pressed[current] = label
            current = press_and_wait(page, "1" if label == "neg" else "2", current)
        assert current not in pressed  # the next item is a new one
        assert page.locator("#progress").inner_text().startswith("10 / 14")
        assert (tmp_path / "label-ui.png").stat().st_size > 10_000
    finally:
        kill(proc)

    lines = [json.loads(line) for line in answers.read_text(encoding="utf-8").splitlines()]
    assert [e["event"] for e in lines] == ["answer"] * 10

    proc, base = start_server(tmp_path, *args)
    try:
        state = get_json(base + "/api/state")
        assert state["answered"] == 10
        assert {k: v["label"] for k, v in state["answers"].items()} == pressed
        commented = [v for v in state["answers"].values() if v.get("comment")]
        assert [c["comment"] for c in commented] == ["很满意，推荐2"]
        assert all(v["annotator"] == "tester" for v in state["answers"].values())
        # undo works on answers given before the restart: the last one comes back to the screen
        last = lines[-1]["item"]
        page.goto(base + "/")
        page.wait_for_function("document.body.dataset.ready === '1'")
        before = page.locator("#item").get_attribute("data-item")
        assert before not in pressed
        assert press_and_wait(page, "u", before) == last
        assert get_json(base + "/api/state")["answered"] == 9
    finally:
        kill(proc)
        page.close()
    assert json.loads(answers.read_text(encoding="utf-8").splitlines()[-1])["event"] == "undo"


def test_ner_spans_are_tagged_from_a_selection_and_saved_in_characters(browser, tmp_path):
    # 𠮷 is one character but two UTF-16 units: offsets must come back as Python character offsets
    text = "𠮷野家在北京开了新店。"
    items = tmp_path / "ner.jsonl"
    items.write_text(json.dumps({"id": "s1", "text": text, "prediction": [[0, 3, "ORG"]], "score": 0.4},
                                ensure_ascii=False) + "\n", encoding="utf-8")
    answers = tmp_path / "ner-answers.jsonl"
    proc, base = start_server(tmp_path, str(items), "--kind", "ner", "--labels", "PER,LOC,ORG", "--out", str(answers))
    page = browser.new_page()
    try:
        page.goto(base + "/")
        page.wait_for_function("document.body.dataset.ready === '1'")
        assert page.locator("#text mark").inner_text().startswith("𠮷野家")  # the suggestion is pre-filled
        page.evaluate("""() => {
            const node = [...document.querySelectorAll('#text span')].find(s => s.textContent.includes('北京')).firstChild;
            const at = node.data.indexOf('北京');
            const range = document.createRange();
            range.setStart(node, at);
            range.setEnd(node, at + 2);
            window.getSelection().removeAllRanges();
            window.getSelection().addRange(range);
        }""")
        page.keyboard.press("2")  # LOC
        assert page.locator("#text mark[data-label='LOC']").inner_text().startswith("北京")
        page.keyboard.press("Enter")
        page.wait_for_url("**/done", timeout=15_000)
    finally:
        kill(proc)
        page.close()
    saved = json.loads(answers.read_text(encoding="utf-8").splitlines()[-1])
    assert saved["spans"] == [[0, 3, "ORG"], [4, 6, "LOC"]]
    assert [text[s:e] for s, e, _ in saved["spans"]] == ["𠮷野家", "北京"]
