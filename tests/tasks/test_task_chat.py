import json

import pytest

from lmforge.errors import InputError
from lmforge.tasks.examples import (
    ClassificationExample,
    ConversationExample,
    NerExample,
    PreferenceExample,
    TaskData,
    Turn,
    example_from_dict,
)
from lmforge.tasks.loaders import load_conversations, load_examples, load_preferences
from lmforge.tasks.splits import make_task


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_conversations_from_openai_and_sharegpt_fields(tmp_path):
    path = _write(tmp_path / "chat.jsonl", [
        {"id": "a", "messages": [{"role": "system", "content": "你是客服。"}, {"role": "user", "content": "快递到了吗？"},
                                 {"role": "assistant", "content": "已经签收了。"}]},
        {"system": "Be brief.", "conversations": [{"from": "human", "value": "What is 2+2?"},
                                                  {"from": "gpt", "value": "4"}], "split": "test"},
    ])
    rows = load_conversations(path)
    assert [t.role for t in rows[0].messages] == ["system", "user", "assistant"]
    assert rows[0].meta == {"where": "chat.jsonl:1", "id": "a"}
    assert rows[1].messages == (Turn("system", "Be brief."), Turn("user", "What is 2+2?"), Turn("assistant", "4"))
    assert rows[1].meta["split"] == "test" and rows[1].input_text == "Be brief.\nWhat is 2+2?"


def test_conversation_roles_are_checked_with_file_and_line(tmp_path):
    bad = [{"messages": [{"role": "bot", "content": "hi"}]},
           {"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "late"},
                         {"role": "assistant", "content": "x"}]},
           {"messages": [{"role": "user", "content": "no answer"}]},
           {"conversations": [{"from": "alien", "value": "x"}]},
           {"text": "not a chat"}]
    messages = ["role 'bot' is not one of system, user, assistant, tool", "a system turn may only come first",
                "needs at least one assistant turn", "speaker 'alien' is not one of", "no conversation: expected messages, conversations"]
    for i, (row, message) in enumerate(zip(bad, messages, strict=True)):
        path = _write(tmp_path / f"bad{i}.jsonl", [row])
        with pytest.raises(InputError, match=rf"bad{i}\.jsonl:1: .*{message}"):
            load_conversations(path)
    both = _write(tmp_path / "mixed.jsonl", [bad[0], {"messages": [{"role": "user", "content": "q"},
                                                                   {"role": "assistant", "content": "a"}]}])
    assert len(load_conversations(both, on_error="skip")) == 1


def test_preference_pairs_from_strings_and_conversations(tmp_path):
    path = _write(tmp_path / "dpo.jsonl", [
        {"prompt": "给这条评论判断情感：很好用", "chosen": "正面", "rejected": "负面"},
        {"chosen": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}],
         "rejected": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Lyon."}]},
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello!", "rejected": "Go away."},
    ])
    rows = load_preferences(path)
    assert (rows[0].prompt, rows[0].chosen, rows[0].rejected) == ("给这条评论判断情感：很好用", "正面", "负面")
    assert rows[1].prompt == (Turn("user", "Capital of France?"),) and rows[1].chosen == "Paris."
    assert rows[2].input_text == "Hi" and rows[2].texts() == ("Hi", "Hello!", "Go away.")
    for row, message in [({"prompt": "p", "chosen": "same", "rejected": "same"}, "prefers nothing"),
                         ({"prompt": "p", "chosen": "a"}, "no field 'rejected'"),
                         ({"chosen": "a", "rejected": "b"}, "no field 'prompt'"),
                         ({"chosen": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a"}],
                           "rejected": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "b"}]},
                          "answer different conversations")]:
        with pytest.raises(InputError, match=message):
            load_preferences(_write(tmp_path / "bad.jsonl", [row]))


def test_chat_tasks_split_save_and_load(tmp_path):
    convs = [ConversationExample(messages=(Turn("user", f"q{i}"), Turn("assistant", f"a{i % 7}"))) for i in range(30)]
    prefs = [PreferenceExample(prompt="q", chosen=f"good {i}", rejected="bad") for i in range(10)]
    for kind, rows in (("conversation", convs + convs[:3]), ("preference", prefs)):
        task = make_task(kind, rows, seed=2)
        assert sum(len(p) for p in task.splits().values()) == len(rows) - (3 if kind == "conversation" else 0)
        assert task.labels == [] and TaskData.load(task.save(tmp_path / kind)) == task
    with pytest.raises(InputError, match="a preference task holds PreferenceExamples, not ConversationExample"):
        make_task("preference", convs)


def test_examples_are_typed_per_kind():
    ner = NerExample(tokens=["Bill", "Clinton", "在", "北", "京"], tags=["B-PER", "I-PER", "O", "B-LOC", "I-LOC"],
                     text="Bill Clinton在北京")
    assert ner.spans == [(0, 12, "PER"), (13, 15, "LOC")]
    assert NerExample.from_spans(ner.text, ner.spans)[0] == ner
    with pytest.raises(InputError, match="2 tokens but 1 tags"):
        NerExample(tokens=["a", "b"], tags=["O"])
    cls = ClassificationExample(text="好评", label="pos", meta={"id": 1})
    assert example_from_dict("classification", cls.to_dict()) == cls and not hasattr(cls, "tokens")
    with pytest.raises(AttributeError):
        cls.label = "neg"  # frozen: a loaded example does not change under its task


ALPACA = {"instruction": "把这句话翻译成英文", "input": "今天天气很好。", "output": "The weather is nice today.",
          "system": "You translate.", "history": [["你好", "Hello"]]}


def test_alpaca_rows_become_conversations_with_history_and_input():
    from lmforge.tasks.chat import chat_from_row

    turns = chat_from_row(ALPACA).messages
    assert [t.role for t in turns] == ["system", "user", "assistant", "user", "assistant"]
    assert turns[3].content == "把这句话翻译成英文\n\n今天天气很好。" and turns[4].content == ALPACA["output"]
    assert chat_from_row({"prompt": "q", "response": "a"}).messages[1] == Turn("assistant", "a")


def test_scored_completions_pair_the_best_with_the_worst(tmp_path):
    rows = [{"instruction": "Name a colour.", "completions": [
        {"response": "Blue.", "overall_score": 8.5}, {"response": "Dunno", "overall_score": 2},
        {"response": "Red, obviously.", "overall_score": 7}]},
        {"prompt": "x", "completions": [{"text": "a", "score": 3}, {"text": "b", "score": 3}]}]
    path = _write(tmp_path / "uf.jsonl", rows)
    with pytest.raises(InputError, match=r"uf\.jsonl:2: every completion has the same score"):
        load_preferences(path)
    (pair,) = load_preferences(path, on_error="skip")
    assert (pair.prompt, pair.chosen, pair.rejected, pair.meta["scores"]) == ("Name a colour.", "Blue.", "Dunno",
                                                                                [8.5, 2.0])


def test_conversations_from_parquet_tables_datasets_directories_and_records(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmforge.records import Record, write_parquet

    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！有什么可以帮你？"}]
    pq.write_table(pa.Table.from_pylist([{"messages": messages}, {"messages": messages[:1] + messages},
                                         {"messages": [{"role": "user", "content": None}]}]), tmp_path / "train.parquet")
    with pytest.raises(InputError, match=r"train\.parquet:row 3: the content of a user turn must be a string"):
        load_conversations(tmp_path / "train.parquet")
    assert [len(r.messages) for r in load_conversations(tmp_path / "train.parquet", on_error="skip")] == [2, 3]
    pq.write_table(pa.Table.from_pylist([ALPACA, {**ALPACA, "input": None, "history": None}]), tmp_path / "a.parquet")
    assert [len(r.messages) for r in load_conversations(tmp_path / "a.parquet")] == [5, 3]
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"messages": messages}] * 3),
                               "test": datasets.Dataset.from_list([{"messages": messages}])})
    ds.save_to_disk(str(tmp_path / "ds"))
    rows = load_conversations(tmp_path / "ds")
    assert [r.meta["split"] for r in rows] == ["train", "train", "train", "test"]
    assert rows[0].messages[1].content == "你好！有什么可以帮你？"
    write_parquet(tmp_path / "rec.parquet", [Record(id="r1", text="unused", source="s", meta={"chat": messages})])
    (rec,) = load_examples(tmp_path / "rec.parquet", kind="conversation", label_field="chat")
    assert rec.messages[0].content == "你好" and rec.meta["id"] == "r1"
