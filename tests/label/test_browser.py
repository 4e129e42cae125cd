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


@pytest.fixture
def sampled(tmp_path: Path) -> Path:
    """Four Chinese prompts with three answers each (12 pairs), shaped like `lmforge generate --out`.

    The answers are real reviews; the first pair holds a long answer (it must scroll in its box) and
    one with HTML in it (it must show as text).
    """
    reviews = [e.text for e in load_task("zh_sentiment", max_per_class=40).train[:60]]
    long_answer = "\n".join(reviews[20:60])
    rows = [{"id": "q1", "prompt": "写一条购物评价。", "samples": [long_answer, "<b>加粗</b>不是标签：" + reviews[0], reviews[1]]}]
    rows += [{"id": f"q{i}", "prompt": f"第{i}个问题：评价一下你最近买的东西。",
              "samples": reviews[3 * i:3 * i + 3]} for i in range(2, 5)]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def shown_pair(page) -> tuple[str, str, str]:
    """(pair id, left answer, right answer) as the page holds them."""
    return page.evaluate("""() => [document.querySelector('#item').dataset.item,
                                   document.querySelector('#left .answer-text').textContent,
                                   document.querySelector('#right .answer-text').textContent]""")


def test_ten_pairs_compared_by_keyboard_survive_a_kill_and_become_a_preference_set(browser, sampled, tmp_path):
    from lmforge.cli.main import main
    from lmforge.tasks.loaders import load_preferences

    log = tmp_path / "pairs.answers.jsonl"
    args = (str(sampled), "--kind", "pairwise", "--out", str(log), "--annotator", "tester", "--seed", "3")
    proc, base = start_server(tmp_path, *args)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    keys = ["a", "b", "t", "x", "a", "b", "b", "a", "x", "a"]
    expected: dict[str, tuple] = {}  # pair id -> (chosen, rejected), or the outcome of a tie / both bad
    comments: dict[str, str] = {}
    try:
        page.goto(base + "/")
        page.wait_for_function("document.body.dataset.ready === '1'")
        current, left, right = shown_pair(page)
        # side by side, the long answer scrolls inside its own box, HTML in an answer is text
        boxes = [page.locator(f"#{side} .answer-text").bounding_box() for side in ("left", "right")]
        assert boxes[0]["x"] + boxes[0]["width"] <= boxes[1]["x"] and abs(boxes[0]["y"] - boxes[1]["y"]) < 2
        assert page.evaluate("Math.max(...[...document.querySelectorAll('.answer-text')]"
                             ".map(e => e.scrollHeight - e.clientHeight))") > 200
        assert page.evaluate("document.querySelectorAll('.answer-text b').length") == 0
        assert "<b>加粗</b>不是标签" in left + right
        cdp = page.context.new_cdp_session(page)
        for n, key in enumerate(keys):
            if n == 3:
                # a Chinese comment committed by an input method; letters typed in the box are text, not choices
                page.keyboard.press("c")
                page.keyboard.insert_text("两个都答非所问")
                page.keyboard.press("a")
                assert page.input_value("#comment") == "两个都答非所问a"
                page.keyboard.press("Escape")
            if n == 5:
                # a real composition (pinyin "hao" → 好): the key pressed while composing is not a shortcut
                page.keyboard.press("c")
                cdp.send("Input.imeSetComposition", {"text": "hao", "selectionStart": 3, "selectionEnd": 3})
                page.keyboard.press("b")
                cdp.send("Input.insertText", {"text": "好"})
                page.keyboard.press("Escape")
                # and composing keys outside the box (isComposing, or the keyCode 229 some IMEs send) do nothing
                page.evaluate("""() => {
                    document.body.dispatchEvent(new KeyboardEvent('keydown', {key: 'a', isComposing: true, bubbles: true}));
                    document.body.dispatchEvent(new KeyboardEvent('keydown', {key: 'x', keyCode: 229, bubbles: true}));
                }""")
                page.wait_for_timeout(300)
                assert "好" in page.input_value("#comment")
                assert page.locator("#item").get_attribute("data-item") == current
                assert get_json(base + "/api/state")["answered"] == 5
            if page.input_value("#comment"):
                comments[current] = page.input_value("#comment").strip()
            if n == 3:
                page.screenshot(path=str(tmp_path / "pair-ui.png"), full_page=True)
            expected[current] = {"a": (left, right), "b": (right, left), "t": "tie", "x": "both_bad"}[key]
            current = press_and_wait(page, key, current)
            _, left, right = shown_pair(page)
        assert current not in expected
        assert page.locator("#progress").inner_text().startswith("10 / 12 pairs compared")
        assert (tmp_path / "pair-ui.png").stat().st_size > 10_000
    finally:
        kill(proc)

    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [e["event"] for e in lines] == ["answer"] * 10 and {e["item"] for e in lines} == set(expected)

    proc, base = start_server(tmp_path, *args)
    try:
        state = get_json(base + "/api/state")
        assert state["answered"] == 10 and state["counts"]["tie"] == 1 and state["counts"]["both_bad"] == 2
        assert {k: v["comment"] for k, v in state["answers"].items() if v["comment"]} == comments
        assert len(comments) == 2 and all(v["annotator"] == "tester" for v in state["answers"].values())
        page.goto(base + "/")
        page.wait_for_function("document.body.dataset.ready === '1'")
        assert page.locator("#progress").inner_text().startswith("10 / 12 pairs compared")
        assert page.locator("#item").get_attribute("data-item") not in expected
    finally:
        kill(proc)
        page.close()

    out = tmp_path / "preferences.jsonl"
    assert main(["label", "answers", str(log), "--out", str(out)]) == 0
    prefs = {e.meta["id"]: (e.chosen, e.rejected) for e in load_preferences(out)}
    assert prefs == {k: v for k, v in expected.items() if isinstance(v, tuple)} and len(prefs) == 7
