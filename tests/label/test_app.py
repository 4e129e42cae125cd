import json
import logging

import numpy as np
import pytest

from lmforge.errors import ConfigError, InputError
from lmforge.label.active import entropy
from lmforge.label.app import create_app, segments
from lmforge.label.session import Item, Session, load_items
from lmforge.label.store import AnswerStore, answers_to_examples
from lmforge.tasks.builtin import load_task

BASE = "http://127.0.0.1:8765"  # the app answers to its own host names only (DNS rebinding)


def test_answers_and_undos_are_replayed_from_the_log(tmp_path):
    path = tmp_path / "answers.jsonl"
    store = AnswerStore(path)
    store.answer("a", "好", label="pos")
    store.answer("b", "差", label="neg", comment="很差")
    store.answer("a", "好", label="neg")  # changed mind: the latest answer stands
    store.undo()  # takes back a=neg, so a=pos stands again
    store.answer("c", "北京", spans=[[0, 2, "LOC"]])
    again = AnswerStore(path)
    assert {k: v.get("label", v.get("spans")) for k, v in again.current().items()} == \
        {"a": "pos", "b": "neg", "c": [[0, 2, "LOC"]]}
    assert again.undo()["item"] == "c" and again.undo()["item"] == "b"
    assert {k: v["label"] for k, v in AnswerStore(path).current().items()} == {"a": "pos"}
    assert [e["event"] for e in AnswerStore(path).events] == ["answer"] * 3 + ["undo", "answer", "undo", "undo"]
    with pytest.raises(InputError, match="either a label or spans"):
        store.answer("d", "x")


def test_a_line_cut_short_by_a_crash_is_dropped_and_the_log_stays_usable(tmp_path, caplog):
    path = tmp_path / "answers.jsonl"
    AnswerStore(path).answer("a", "好", label="pos")
    with open(path, "ab") as fh:
        fh.write(b'{"event": "answer", "item": "b", "te')
    with caplog.at_level(logging.WARNING):
        store = AnswerStore(path)
    assert "cut short" in caplog.text and list(store.current()) == ["a"]
    store.answer("c", "差", label="neg")
    assert [json.loads(line)["item"] for line in path.read_text(encoding="utf-8").splitlines()] == ["a", "c"]
    path.write_text('{"event": "answer", "item": "a"}\nnot json\n{"event": "undo", "undoes": 0}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"answers\.jsonl:2: not a valid answer event"):
        AnswerStore(path)


def test_answers_become_examples(tmp_path):
    store = AnswerStore(tmp_path / "a.jsonl")
    store.answer("1", "新华社记者在北京", spans=[[0, 3, "ORG"], [6, 8, "LOC"]], comment="ok")
    (ex,) = answers_to_examples(store, "ner")
    assert ex.tags == ["B-ORG", "I-ORG", "I-ORG", "O", "O", "O", "B-LOC", "I-LOC"] and ex.meta["comment"] == "ok"
    with pytest.raises(InputError, match="has spans, not a label"):
        answers_to_examples(store, "classification")


def test_load_items_reads_jsonl_and_csv_and_hides_labels(tmp_path):
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text('{"id": "x", "text": "好", "label": "pos", "prediction": {"label": "pos", "score": 0.7}}\n'
                     '{"text": "差"}\n', encoding="utf-8")
    items = load_items(jsonl)
    assert [(it.id, it.prediction, it.score, it.meta) for it in items] == [("x", "pos", 0.7, {"gold": "pos"}),
                                                                           ("2", None, None, {})]
    csv = tmp_path / "items.csv"
    csv.write_text("id,text,prediction\n1,北京很大,\"[[0, 2, \"\"LOC\"\"]]\"\n", encoding="utf-8")
    assert load_items(csv, "ner")[0].prediction == [[0, 2, "LOC"]]
    jsonl.write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="id '1' appears twice"):
        load_items(jsonl)
    with pytest.raises(InputError, match="no text in field 'text'"):
        jsonl.write_text('{"body": "a"}\n', encoding="utf-8")
        load_items(jsonl)


@pytest.fixture
def session(tmp_path):
    rows = load_task("zh_sentiment", max_per_class=30).train[:40]
    items = [Item(f"r{i}", e.text, meta={"gold": e.label}) for i, e in enumerate(rows)]
    return Session(items, ["neg", "pos"], AnswerStore(tmp_path / "answers.jsonl"), annotator="t")


@pytest.fixture
def client(session):
    from fastapi.testclient import TestClient

    return TestClient(create_app(session), base_url=BASE)


def test_next_item_is_the_one_the_online_model_is_least_sure_about(session):
    first = session.next_item()
    assert first.id == "r0"  # no model yet, no predictions: file order
    for it in session.items[:6]:
        session.answer(it.id, label=it.meta["gold"])
    nxt = session.next_item()
    probs = session._probs
    open_ = [i for i, it in enumerate(session.items) if it.id not in session.store.current()]
    assert nxt.id == session.items[open_[int(np.argmax(entropy(probs[open_])))]].id
    sug = session.suggestion(nxt)
    assert sug["source"] == "online model" and sug["label"] in ("neg", "pos") and 0.5 <= sug["prob"] <= 1
    assert session.state()["model"] == "model trained on 6 answers"


def test_the_http_api_saves_undoes_and_skips(client, session, tmp_path):
    res = client.get("/", follow_redirects=False)
    assert res.status_code == 303 and res.headers["location"] == "/item/r0"
    page = client.get("/item/r0").text
    assert session.items[0].text[:10] in page and 'data-key="2"' in page and "pos" in page
    res = client.post("/api/answer", json={"item": "r0", "label": "pos", "comment": "写得好"})
    assert res.json()["saved"] and res.json()["next"] == "/item/r1"
    assert json.loads((tmp_path / "answers.jsonl").read_text(encoding="utf-8"))["comment"] == "写得好"
    res = client.post("/api/answer", json={"item": "r1", "label": "maybe"})
    assert res.status_code == 400 and "not one of ['neg', 'pos']" in res.json()["detail"]
    assert client.post("/api/skip", json={"item": "r1"}).json()["next"] == "/item/r2"
    assert client.post("/api/undo").json() == {"undone": "r0", "seq": 1, "next": "/item/r0"}
    assert client.get("/api/state").json()["answered"] == 0
    assert client.post("/api/undo").json()["undone"] is None
    assert client.get("/item/nope").status_code == 404


def test_item_text_is_escaped(tmp_path):
    from fastapi.testclient import TestClient

    items = [Item("x", "<script>alert(1)</script>很好 & 坏"), Item("y", "二")]
    session = Session(items, ["neg", "pos"], AnswerStore(tmp_path / "a.jsonl"), strategy="order")
    page = TestClient(create_app(session), base_url=BASE).get("/item/x").text
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;很好 &amp; 坏" in page


def test_ner_answers_are_checked(tmp_path):
    from fastapi.testclient import TestClient

    items = [Item("s", "江泽民在北京", prediction=[[0, 3, "PER"]], score=0.3), Item("t", "上海", score=0.9)]
    session = Session(items, ["PER", "LOC"], AnswerStore(tmp_path / "a.jsonl"), kind="ner")
    client = TestClient(create_app(session), base_url=BASE)
    assert client.get("/", follow_redirects=False).headers["location"] == "/item/s"  # least sure first
    page = client.get("/item/s").text
    assert 'data-label="PER"' in page and ">江泽民<sup>PER</sup></mark>" in page
    bad = client.post("/api/answer", json={"item": "s", "spans": [[0, 3, "PER"], [2, 5, "LOC"]]})
    assert bad.status_code == 400 and "overlap" in bad.json()["detail"]
    bad = client.post("/api/answer", json={"item": "s", "spans": [[4, 9, "LOC"]]})
    assert bad.status_code == 400 and "outside the text" in bad.json()["detail"]
    ok = client.post("/api/answer", json={"item": "s", "spans": [[4, 6, "LOC"], [0, 3, "PER"]]})
    assert ok.json()["next"] == "/item/t"
    assert session.store.current()["s"]["spans"] == [[0, 3, "PER"], [4, 6, "LOC"]]
    assert segments("江泽民在北京", [[0, 3, "PER"], [4, 6, "LOC"]]) == [
        {"text": "江泽民", "start": 0, "label": "PER"}, {"text": "在", "start": 3, "label": None},
        {"text": "北京", "start": 4, "label": "LOC"}]
    with pytest.raises(InputError, match="predicted span"):
        Session([Item("z", "短", prediction=[[0, 5, "PER"]])], ["PER"], AnswerStore(tmp_path / "b.jsonl"), kind="ner")
    with pytest.raises(ConfigError, match="at most 9 labels"):
        Session(items, [str(i) for i in range(10)], AnswerStore(tmp_path / "c.jsonl"), kind="ner")


def test_an_access_key_guards_every_route(session):
    from fastapi.testclient import TestClient

    from lmforge.errors import ConfigError
    from lmforge.label.app import serve

    c = TestClient(create_app(session, access_key="s3cret"), base_url=BASE)
    assert c.get("/item/r0").status_code == 401
    assert c.post("/api/answer", json={"item": "r0", "label": "pos"}).status_code == 401
    res = c.get("/item/r0?key=s3cret", follow_redirects=False)
    assert res.status_code == 303 and res.headers["location"] == "/item/r0"
    assert c.get("/item/r0").status_code == 200  # the cookie carries the key now
    assert c.post("/api/answer", json={"item": "r0", "label": "pos"}).json()["saved"]
    fresh = TestClient(create_app(session, access_key="s3cret"), base_url=BASE)
    assert fresh.get("/api/state", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert fresh.get("/api/state", headers={"Authorization": "Bearer wrong"}).status_code == 401
    with pytest.raises(ConfigError, match="access key"):
        serve(session, host="0.0.0.0", port=0)
    with pytest.raises(ConfigError, match=r"max_body_bytes: .*greater than or equal to 1024 \(got 10\)"):
        serve(session, max_body_bytes=10)
    with pytest.raises(ConfigError, match=r"allowed_hosts: 'http://x' is not a host name"):
        serve(session, allowed_hosts=["http://x"])
