"""Pairwise preference labelling: pairs from sampled answers, seeded sides, the decision log, the preference set."""

from __future__ import annotations

import itertools
import json
import logging
from urllib.parse import quote

import pytest

from lmforge.cli.main import main
from lmforge.errors import InputError
from lmforge.label.app import create_app
from lmforge.label.commands import open_session, write_answers
from lmforge.label.pairwise import PairSession, coin, load_pairs, preference_examples, preference_rows
from lmforge.label.store import AnswerStore
from lmforge.tasks.builtin import load_task
from lmforge.tasks.loaders import load_preferences

BASE = "http://127.0.0.1:8765"
CHAT = [{"role": "system", "content": "Answer in one paragraph."}, {"role": "user", "content": "Explain a Python feature."}]


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    """Real text to stand in for sampled answers: Chinese reviews and Python documentation paragraphs."""
    reviews = [e.text for e in load_task("zh_sentiment", max_per_class=8).train[:10]]
    docs = [e.text[:400] for e in load_task("en_pydoc_topic").train[:6]]
    return {"zh": reviews, "en": docs}


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def samples(tmp_path, texts):
    """A file shaped like `lmforge generate --out`: three prompts with K answers, one with answer_a/answer_b."""
    zh, en = texts["zh"], texts["en"]
    rows = [{"id": "q1", "prompt": "写一条购物评价。", "samples": [zh[0], zh[1], zh[0] + " ", "  ", zh[2]],
             "meta": {"generation": {"seed": 1}}},
            {"id": "q2", "prompt": CHAT, "samples": en[:3]},
            {"prompt": "评价一下这家酒店。", "answer_a": zh[3], "answer_b": "<script>alert(1)</script>不好 & 贵"}]
    return write_rows(tmp_path / "samples.jsonl", rows)


def test_pairs_are_every_pair_of_distinct_answers_in_order(samples, texts, caplog):
    with caplog.at_level(logging.WARNING):
        pairs = load_pairs(samples)
    # q1: the copy with a trailing space and the blank answer are dropped; ids keep the input's sample numbers
    assert [p.id for p in pairs] == ["q1:0-1", "q1:0-4", "q1:1-4", "q2:0-1", "q2:0-2", "q2:1-2", "3:0-1"]
    assert "1 duplicate answers" in caplog.text and "1 empty answers" in caplog.text
    q1 = pairs[1]
    assert (q1.a, q1.b, q1.a_index, q1.b_index) == (texts["zh"][0], texts["zh"][2], 0, 4)
    assert q1.meta == {"generation": {"seed": 1}} and pairs[3].prompt == CHAT
    assert pairs[3].text == "system: Answer in one paragraph.\nuser: Explain a Python feature."
    # the sides: a seeded coin per pair id, the same on every load, another with another seed
    assert [p.swapped for p in pairs] == [coin(0, p.id) for p in pairs] == [p.swapped for p in load_pairs(samples)]
    assert [p.swapped for p in load_pairs(samples, seed=1)] != [p.swapped for p in pairs]
    for p in pairs:
        assert (p.left, p.right) == ((p.b, p.a) if p.swapped else (p.a, p.b))
        assert p.outcome("A") == ("b" if p.swapped else "a") and p.outcome("B") == ("a" if p.swapped else "b")
        assert [p.outcome(c) for c in ("tie", "both_bad")] == ["tie", "both_bad"]
        assert all(p.outcome(p.shown(o)) == o for o in ("a", "b", "tie", "both_bad"))
    with pytest.raises(InputError, match="choice 'left' is not one of A, B, tie, both_bad"):
        pairs[0].outcome("left")


def test_the_coin_is_fair_and_max_pairs_keeps_a_seeded_subset(tmp_path, texts):
    answers = texts["zh"][:8]
    rows = [{"id": f"p{i}", "prompt": f"问题 {i}", "samples": answers} for i in range(12)]
    path = write_rows(tmp_path / "many.jsonl", rows)
    every = load_pairs(path)
    assert len(every) == 12 * 28
    share = sum(p.swapped for p in every) / len(every)
    assert 0.42 < share < 0.58  # 336 flips of a fair coin: 0.5 +- 0.08 is over 3 standard deviations
    combos = [f"{i}-{j}" for i, j in itertools.combinations(range(8), 2)]
    subsets = {}
    for seed in range(4):
        picked = load_pairs(path, max_pairs=5, seed=seed)
        assert len(picked) == 12 * 5 and picked == load_pairs(path, max_pairs=5, seed=seed)
        per_prompt = [[p.id.split(":")[1] for p in picked if p.prompt_id == f"p{i}"] for i in range(12)]
        for got in per_prompt:
            assert len(got) == 5 and got == sorted(got, key=combos.index)  # a subset, in pair order
        assert len({tuple(g) for g in per_prompt}) > 1  # each prompt draws its own subset
        subsets[seed] = per_prompt
    assert len({json.dumps(s) for s in subsets.values()}) == 4


def test_bad_pair_files_are_refused_with_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    cases = [('{"prompt": "a", "samples": ["x", "y"]}\n{"prompt": "b"}\n', r"bad\.jsonl:2: no answers"),
             ('{"prompt": "a", "samples": ["x", 3]}\n', r"bad\.jsonl:1: answer 1 is not a string"),
             ('{"prompt": "a", "samples": "x"}\n', r"bad\.jsonl:1: samples must be a list"),
             ('{"samples": ["x", "y"]}\n', r"bad\.jsonl:1: no prompt"),
             ('{"messages": [{"role": "bot", "content": "a"}], "samples": ["x", "y"]}\n', r"bad\.jsonl:1: role 'bot'"),
             ('{"id": 1, "prompt": "a", "samples": ["x", "y"]}\n{"id": "1", "prompt": "b", "samples": ["x", "y"]}\n',
              r"bad\.jsonl:2: id '1' appears twice"),
             ('[1, 2]\n', r"bad\.jsonl:1: not a JSON object"),
             ('{"prompt": "a", "samples": ["x", "y"]\n', r"bad\.jsonl:1: not valid JSON"),
             ('{"prompt": "a", "samples": ["同一个", " 同一个 ", ""]}\n', r"no pairs to compare")]
    for text, message in cases:
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(InputError, match=message):
            load_pairs(bad)
    with pytest.raises(InputError, match="max_pairs must be at least 1"):
        load_pairs(bad, max_pairs=0)


def _decide(session: PairSession, pair_id: str, outcome: str, comment: str = "") -> dict:
    """Press the key that gives `outcome` on this pair's sides."""
    return session.answer(pair_id, choice=session.item(pair_id).shown(outcome), comment=comment)


def test_decisions_are_logged_unswapped_replayed_and_exported(samples, tmp_path):
    log = tmp_path / "answers.jsonl"
    session = open_session(str(samples), log, kind="pairwise", annotator="ann")
    ids = [p.id for p in session.items]
    swapped = next(p for p in session.items if p.swapped)
    event = session.answer(swapped.id, choice="A", comment="左边更具体")  # the left one is b on a swapped pair
    assert event["label"] == "b" and event["pair"]["pressed"] == "A" and event["pair"]["swapped"] is True
    _decide(session, ids[0], "a")
    _decide(session, ids[3], "tie")
    _decide(session, ids[4], "both_bad")
    _decide(session, ids[5], "a")
    _decide(session, ids[5], "b", "改主意了")  # a later decision on the same pair replaces the earlier one
    _decide(session, ids[6], "a")
    assert session.undo()["item"] == ids[6]  # taken back: not in the set
    assert session.next_item().id == next(i for i in ids if i not in {swapped.id, ids[0], ids[3], ids[4], ids[5]})

    again = PairSession(load_pairs(samples), AnswerStore(log), annotator="ann")
    state = again.state()
    assert state["answered"] == 5 and state["counts"] == {"a": 1, "b": 2, "tie": 1, "both_bad": 1}
    assert state["answers"][swapped.id] == {**state["answers"][swapped.id], "label": "b", "pressed": "A",
                                            "comment": "左边更具体"}
    prefs = preference_rows(again.store)
    assert prefs.counts == state["counts"] and prefs.left_out == {"tie": 1, "both_bad": 1}
    by_id = {r["id"]: r for r in prefs.rows}
    assert set(by_id) == {swapped.id, ids[0], ids[5]}
    pair = {p.id: p for p in again.items}
    assert (by_id[swapped.id]["chosen"], by_id[swapped.id]["rejected"]) == (swapped.left, swapped.right)
    assert (by_id[ids[0]]["chosen"], by_id[ids[0]]["rejected"]) == (pair[ids[0]].a, pair[ids[0]].b)
    assert (by_id[ids[5]]["chosen"], by_id[ids[5]]["rejected"]) == (pair[ids[5]].b, pair[ids[5]].a)
    assert by_id[ids[5]]["meta"]["comment"] == "改主意了" and by_id[ids[5]]["prompt"] == CHAT
    assert by_id[ids[5]]["meta"] | {"time": None} == {
        "pair_id": ids[5], "prompt_id": "q2", "annotator": "ann", "comment": "改主意了", "chosen_index": 2,
        "rejected_index": 1, "swapped": pair[ids[5]].swapped, "pressed": pair[ids[5]].shown("b"), "time": None,
        "seq": by_id[ids[5]]["meta"]["seq"]}

    # the file the command writes is a preference set the DPO reader takes as it is
    out = tmp_path / "prefs.jsonl"
    assert main(["label", "answers", str(log), "--out", str(out)]) == 0
    loaded = {e.meta["id"]: e for e in load_preferences(out)}
    assert {k: (e.chosen, e.rejected) for k, e in loaded.items()} == \
        {k: (r["chosen"], r["rejected"]) for k, r in by_id.items()}
    assert [t.role for t in loaded[ids[5]].prompt] == ["system", "user"]
    examples = preference_examples(again.store)
    assert [e.meta["pair_id"] for e in examples] == [r["id"] for r in prefs.rows]
    with pytest.raises(InputError, match="is a pairwise decision"):
        write_answers(log, tmp_path / "x.jsonl", "classification")


def test_the_answers_command_reports_what_it_left_out(samples, tmp_path, capsys):
    log = tmp_path / "answers.jsonl"
    session = open_session(str(samples), log, kind="pairwise", annotator="ann")
    for pair, outcome in zip(session.items, ["a", "tie", "b", "both_bad", "tie"], strict=False):
        _decide(session, pair.id, outcome)
    assert main(["label", "answers", str(log), "--out", str(tmp_path / "p.jsonl"), "--kind", "pairwise"]) == 0
    printed = capsys.readouterr().out
    assert "2 preference pairs written" in printed and "left out: 2 ties, 1 both bad" in printed
    # a log of labels is not a preference set, and one log holds one kind
    labels = AnswerStore(tmp_path / "labels.jsonl")
    labels.answer("r1", "好", label="pos")
    with pytest.raises(InputError, match="not a pairwise log"):
        preference_rows(labels)
    AnswerStore(log).answer("r1", "好", label="pos")
    assert main(["label", "answers", str(log), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "5 of 6 answers are pairwise decisions" in capsys.readouterr().err


@pytest.fixture
def client(samples, tmp_path):
    from fastapi.testclient import TestClient

    session = open_session(str(samples), tmp_path / "answers.jsonl", kind="pairwise", annotator="web")
    return TestClient(create_app(session), base_url=BASE), session


def test_the_pair_page_shows_both_answers_as_text(client, texts):
    c, session = client
    res = c.get("/", follow_redirects=False)
    assert res.status_code == 303 and res.headers["location"] == "/item/" + quote("q1:0-1", safe="")
    first = session.items[0]
    page = c.get(res.headers["location"]).text
    left, right = page.index('id="left"'), page.index('id="right"')
    assert left < page.index(first.left[:12]) < right < page.index(first.right[:12])
    assert "写一条购物评价。" in page and "0 / 7 pairs compared" in page
    last = c.get("/item/" + quote("3:0-1", safe="")).text
    assert "<script>alert(1)" not in last and "&lt;script&gt;alert(1)&lt;/script&gt;不好 &amp; 贵" in last
    chat = c.get("/item/" + quote("q2:0-1", safe="")).text
    assert 'class="role muted">system</span>' in chat and "Explain a Python feature." in chat
    assert c.get("/item/nope").status_code == 404


def test_the_decision_api_saves_and_refuses_bad_requests(client, tmp_path):
    c, session = client
    first = session.items[0]
    res = c.post("/api/answer", json={"item": first.id, "choice": "B", "comment": "右边好"})
    assert res.status_code == 200 and res.json()["saved"] and res.json()["answered"] == 1
    assert res.json()["next"] == "/item/" + quote(session.items[1].id, safe="")
    event = json.loads((tmp_path / "answers.jsonl").read_text(encoding="utf-8"))
    assert event["label"] == first.outcome("B") and event["pair"]["b"] == first.b and event["comment"] == "右边好"
    page = c.get("/item/" + quote(first.id, safe="")).text
    assert 'id="answered">decided: right' in page and '"choice": "B"' in page
    for body, status, detail in [({"item": first.id, "choice": "C"}, 400, "not one of A, B, tie, both_bad"),
                                 ({"item": "q9:0-1", "choice": "A"}, 400, "no pair 'q9:0-1'"),
                                 ({"item": first.id, "choice": "A", "comment": "长" * 2001}, 400, "at most 2,000")]:
        res = c.post("/api/answer", json=body)
        assert res.status_code == status and detail in res.json()["detail"]
    res = c.post("/api/answer", json=["A"])
    assert res.status_code == 422 and "detail" in res.json()
    res = c.post("/api/answer", content=b"{not json", headers={"Content-Type": "application/json"})
    assert res.status_code == 422
    # the guard: another origin may not decide, another host name is not this app
    res = c.post("/api/answer", json={"item": first.id, "choice": "A"}, headers={"Origin": "http://evil.example"})
    assert res.status_code == 403 and "may not change labels" in res.json()["detail"]
    res = c.post("/api/answer", json={"item": first.id, "choice": "A"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert res.status_code == 403
    res = c.post("/api/answer", json={"item": first.id, "choice": "A"}, headers={"Host": "evil.example"})
    assert res.status_code == 400 and "does not answer to the host" in res.json()["detail"]
    assert c.post("/api/answer", json={"item": first.id, "choice": "tie"}, headers={"Origin": BASE}).status_code == 200
    state = c.get("/api/state").json()
    assert state["answered"] == 1 and state["counts"]["tie"] == 1 and state["answers"][first.id]["pressed"] == "tie"
    assert c.post("/api/undo").json()["undone"] == first.id  # the tie; the earlier B stands again
    assert c.get("/api/state").json()["answers"][first.id]["label"] == first.outcome("B")
    assert c.post("/api/skip", json={"item": session.items[1].id}).json()["next"] == \
        "/item/" + quote(session.items[2].id, safe="")
