"""`lmforge generate --prompts-file F -n K --out S`: K sampled answers per prompt, one JSON line per prompt."""

from __future__ import annotations

import json

import pytest

from lmforge.cli.main import main
from lmforge.errors import InputError
from lmforge.serve.commands import generate_samples
from lmforge.serve.generate import generate_batch
from lmforge.serve.loading import load_generator
from lmforge.serve.samples import read_prompts, row_seed
from lmforge.serve.sampling import SamplingParams
from lmforge.tokenize.chat import ChatEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [
    {"id": "q1", "prompt": "你好，世界。今天", "meta": {"source": "hand"}},
    {"prompt": "The function"},
    {"id": "q3", "messages": [{"role": "system", "content": "简短回答。"}, {"role": "user", "content": "什么是语言模型？"}]},
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_samples_file_rows_match_the_engine_per_prompt_seed(tiny_model_dir, tmp_path, capsys):
    prompts = _write(tmp_path / "prompts.jsonl", PROMPTS)
    out = tmp_path / "samples.jsonl"
    assert main(["generate", str(tiny_model_dir), "--prompts-file", str(prompts), "--num-samples", "3",
                 "--max-new-tokens", "6", "--top-p", "0.9", "--seed", "7", "--device", "cpu", "--out", str(out)]) == 0
    assert f"9 samples of 3 prompts written to {out}" in capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["q1", "2", "q3"]
    assert rows[0]["prompt"] == "你好，世界。今天" and rows[2]["prompt"] == PROMPTS[2]["messages"]
    assert rows[0]["meta"]["source"] == "hand" and all(len(r["samples"]) == 3 for r in rows)
    assert [r["meta"]["generation"]["chat"] for r in rows] == [False, False, True]  # messages use the template
    # each prompt its own seed, from --seed and its id: the engine run on that prompt alone gives the same texts
    loaded = load_generator(tiny_model_dir, device="cpu")
    chat = ChatEncoder(loaded.tokenizer, loaded.chat_template, **loaded.chat_tokens).encode(PROMPTS[2]["messages"])
    for row, prompt in zip(rows, ["你好，世界。今天", "The function", chat], strict=True):
        seed = row_seed(7, row["id"])
        assert row["meta"]["generation"]["seed"] == seed and row["meta"]["generation"]["top_p"] == 0.9
        alone = generate_batch(loaded.model, loaded.tokenizer, [prompt],
                               SamplingParams(max_new_tokens=6, temperature=0.8, top_k=50, top_p=0.9, n=3, seed=seed),
                               loaded.stop_ids)[0]
        assert row["samples"] == [c.text for c in alone]
        assert row["meta"]["tokens"] == [len(c.token_ids) for c in alone]
        assert row["meta"]["finish_reasons"] == [c.finish_reason for c in alone]
    assert len({tuple(r["samples"]) for r in rows}) == 3 and row_seed(7, "q1") != row_seed(7, "q3")
    # the same prompts in another order and batch give each row the same samples
    again = generate_samples(tiny_model_dir, tmp_path / "again.jsonl", _write(tmp_path / "rev.jsonl", PROMPTS[::-1]),
                             max_new_tokens=6, top_p=0.9, n=3, seed=7, device="cpu")
    assert (again.prompts, again.samples) == (3, 9)
    rev = {json.loads(line)["id"]: json.loads(line)["samples"]
           for line in (tmp_path / "again.jsonl").read_text(encoding="utf-8").splitlines()}
    assert rev["q1"] == rows[0]["samples"] and rev["q3"] == rows[2]["samples"]


def test_bad_prompt_files_are_refused_with_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    cases = [('{"prompt": "a"}\n{"text": "b"}\n', r"bad\.jsonl:2: no prompt"),
             ('{"prompt": "a"}\nnot json\n', r"bad\.jsonl:2: not valid JSON"),
             ('{"id": 1, "prompt": "a"}\n{"id": "1", "prompt": "b"}\n', r"bad\.jsonl:2: id '1' appears twice"),
             ('{"messages": [{"role": "robot", "content": "x"}]}\n', r"bad\.jsonl:1: role 'robot' is not one of"),
             ('{"prompt": "a", "meta": [1]}\n', r"bad\.jsonl:1: meta must be an object"),
             ("\n\n", r"bad\.jsonl: no prompts")]
    for text, message in cases:
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(InputError, match=message):
            read_prompts(bad)
    # the command says it in one line, before any model is loaded (the model path does not exist)
    assert main(["generate", str(tmp_path / "no-model"), "--prompts-file", str(bad), "--out", "x.jsonl"]) == 2
    assert main(["generate", str(tmp_path / "no-model"), "a", "--prompts-file", str(bad), "--out", "x.jsonl"]) == 2
    assert main(["generate", str(tmp_path / "no-model"), "--prompts-file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "no prompts" in err and "not both" in err and "needs --out" in err


def test_sampled_answers_become_pairs_and_a_preference_set(tiny_model_dir, tmp_path):
    """generate -n K → pairwise labelling → preference rows the DPO reader loads."""
    from lmforge.label.pairwise import PairSession, load_pairs
    from lmforge.label.store import AnswerStore
    from lmforge.tasks.loaders import load_preferences

    samples = tmp_path / "samples.jsonl"
    assert main(["generate", str(tiny_model_dir), "--prompts-file", str(_write(tmp_path / "p.jsonl", PROMPTS)),
                 "-n", "3", "--max-new-tokens", "8", "--temperature", "1.0", "--device", "cpu", "--chat",
                 "--out", str(samples)]) == 0
    rows = {json.loads(line)["id"]: json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()}
    pairs = load_pairs(samples, seed=5)
    distinct = {k: len({s.strip() for s in r["samples"] if s.strip()}) for k, r in rows.items()}
    assert len(pairs) == sum(d * (d - 1) // 2 for d in distinct.values()) > 0
    session = PairSession(pairs, AnswerStore(tmp_path / "log.jsonl"))
    for pair in pairs:  # the right-hand answer wins every time, whichever of the two it is
        session.answer(pair.id, choice="B")
    out = tmp_path / "prefs.jsonl"
    assert main(["label", "answers", str(tmp_path / "log.jsonl"), "--out", str(out)]) == 0
    loaded = load_preferences(out)
    assert [(e.chosen, e.rejected) for e in loaded] == [(p.right, p.left) for p in pairs]
    by_prompt = {p.id: rows[p.prompt_id]["prompt"] for p in pairs}
    for e in loaded:
        want = by_prompt[e.meta["id"]]
        assert e.prompt == want if isinstance(want, str) else [t.to_dict() for t in e.prompt] == want
