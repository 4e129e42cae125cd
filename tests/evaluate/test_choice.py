"""Multiple-choice evaluation: the benchmarks' file layouts, their prompts, scores equal to a direct
transformers computation, accuracy that follows what the model prefers, and `lmforge evaluate --metrics choice`."""

from __future__ import annotations

import csv
import fnmatch
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lmforge.errors import InputError
from lmforge.evaluate.choice import (
    Item,
    answer_text,
    build_prompt,
    examples_for,
    fit,
    run_choice,
)
from lmforge.evaluate.choice_data import BUILTIN_DIR, ChoiceSet, load_choice
from lmforge.evaluate.loglik import Encoder, load_lm, split_continuations

pytestmark = pytest.mark.usefixtures("one_torch_thread")
transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).parents[2]


def write_csv(path: Path, rows: list[list], header: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


CEVAL = ["id", "question", "A", "B", "C", "D", "answer"]


# --------------------------------------------------------------------------- layouts


def test_ceval_layout_with_dev_beside_and_chinese_names(tmp_path):
    root = tmp_path / "ceval"
    write_csv(root / "val" / "computer_network_val.csv",
              [[0, "TCP 属于哪一层协议？", "应用层", "传输层", "网络层", "链路层", "B"],
               [1, "IPv4 地址有多少位？", "16", "32", "64", "128", "b"]], CEVAL)
    write_csv(root / "dev" / "computer_network_dev.csv",
              [[0, "HTTP 默认使用哪个端口？", "21", "25", "80", "110", "C", "HTTP 默认端口是 80。"]],
              [*CEVAL, "explanation"])
    (root / "subject_mapping.json").write_text(json.dumps(
        {"computer_network": ["Computer Network", "计算机网络", "STEM"]}, ensure_ascii=False), encoding="utf-8")
    data = load_choice(root / "val")  # one split's directory: dev/ beside it holds the examples
    assert [(q.subject, q.answer, q.where) for q in data.questions] == [
        ("computer_network", 1, "computer_network_val.csv:2"), ("computer_network", 1, "computer_network_val.csv:3")]
    assert data.questions[0].options == ("应用层", "传输层", "网络层", "链路层")
    assert [q.question for q in data.dev["computer_network"]] == ["HTTP 默认使用哪个端口？"]
    assert data.langs == {"computer_network": "zh"} and data.names == {"computer_network": "计算机网络"}
    assert data.layouts == {"ceval-csv": 2} and data.files == 2
    one_file = load_choice(root / "val" / "computer_network_val.csv")  # a file finds ../dev too
    assert len(one_file.questions) == 2 and len(one_file.dev["computer_network"]) == 1


def test_cmmlu_layout_subject_from_file_and_split_from_directory(tmp_path):
    root = tmp_path / "cmmlu"
    header = ["", "Question", "A", "B", "C", "D", "Answer"]
    write_csv(root / "test" / "agronomy.csv", [[0, "水稻原产于哪里？", "中国", "埃及", "秘鲁", "挪威", "A"],
                                               [1, "小麦属于哪一科？", "豆科", "禾本科", "菊科", "茄科", "B"]], header)
    write_csv(root / "dev" / "agronomy.csv", [[0, "玉米的果实叫什么？", "颖果", "浆果", "核果", "荚果", "A"]], header)
    data = load_choice(root)  # the release's root: dev/ and test/ inside
    assert [q.answer for q in data.questions] == [0, 1] and data.layouts == {"cmmlu-csv": 2}
    assert len(data.dev["agronomy"]) == 1 and data.names == {"agronomy": "agronomy"}  # no mapping file
    assert data.langs == {"agronomy": "zh"}


def test_mmlu_headerless_csv_and_hf_jsonl_layouts(tmp_path):
    write_csv(tmp_path / "data" / "test" / "abstract_algebra_test.csv",
              [["Find the order of the group Z_4.", "1", "2", "4", "8", "C"],
               ["Is every cyclic group abelian?", "Yes", "No", "Only if finite", "Only if infinite", "A"]])
    write_csv(tmp_path / "data" / "dev" / "abstract_algebra_dev.csv",
              [["What is the identity of (Z, +)?", "0", "1", "-1", "2", "A"]])
    (tmp_path / "data" / "dev" / "anatomy_dev.csv").write_bytes(b"\xff not a question file")  # no such subject here
    data = load_choice(tmp_path / "data" / "test")
    assert [q.answer for q in data.questions] == [2, 0] and data.questions[0].where == "abstract_algebra_test.csv:1"
    assert data.names == {"abstract_algebra": "abstract algebra"} and data.langs == {"abstract_algebra": "en"}
    assert len(data.dev["abstract_algebra"]) == 1 and data.layouts["mmlu-csv"] == 2

    hf = write_jsonl(tmp_path / "hf" / "mmlu.jsonl", [
        {"question": "2 + 2 =", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1},
        {"question": "Which gas do plants absorb?", "subject": "biology", "choices": ["O2", "CO2"], "answer": 1}])
    data = load_choice(hf)
    assert [(q.subject, q.options, q.answer) for q in data.questions] == [
        ("elementary_mathematics", ("3", "4", "5", "6"), 1), ("biology", ("O2", "CO2"), 1)]
    assert data.layouts == {"mmlu-jsonl": 1} and data.dev == {}


def test_generic_jsonl_letters_and_subject_from_the_file_name(tmp_path):
    data = load_choice(write_jsonl(tmp_path / "history.jsonl", [
        {"question": "秦始皇统一六国是在哪一年？", "A": "公元前221年", "B": "公元前206年", "C": "公元618年",
         "D": "公元960年", "answer": "A"},
        {"question": "Who wrote Hamlet?", "a": "Dickens", "b": "Shakespeare", "c": "Austen", "answer": "b"},
        {"Question": "Which is a prime?", "A": "4", "B": "6", "C": "7", "D": "9", "Answer": "C"}]))  # CMMLU's case
    assert [(q.subject, len(q.options), q.answer) for q in data.questions] == [
        ("history", 4, 0), ("history", 3, 1), ("history", 4, 2)]
    assert data.langs == {"history": "en"}  # one question in three holds Han characters: not most


# --------------------------------------------------------------------------- bad input


def test_bad_rows_name_file_and_line_or_are_skipped(tmp_path):
    bad = write_csv(tmp_path / "x" / "law_val.csv",
                    [[0, "第一题", "甲", "乙", "丙", "丁", "A"],
                     [1, "第二题\n跨两行", "甲", "乙", "丙", "丁", "E"],
                     [2, "第三题", "甲", "乙", "丙", "丁", "B", "多余"],
                     [3, "", "甲", "乙", "丙", "丁", "C"],
                     [4, "第五题", "甲", "乙", "丙", "丁", "D"]], CEVAL)
    with pytest.raises(InputError, match=r"law_val\.csv:3: answer 'E' is not one of A, B, C, D"):
        load_choice(bad)
    data = load_choice(bad, on_error="skip")
    assert [q.where for q in data.questions] == ["law_val.csv:2", "law_val.csv:7"] and data.skipped == 3

    broken = write_jsonl(tmp_path / "j" / "q.jsonl", [{"question": "ok?", "choices": ["y", "n"], "answer": 0},
                                                       "{not json", {"question": "idx?", "choices": ["y"], "answer": 0},
                                                       {"question": "far?", "choices": ["y", "n"], "answer": 2}])
    with pytest.raises(InputError, match=r"q\.jsonl:2: not valid JSON"):
        load_choice(broken)
    skipped = load_choice(broken, on_error="skip")
    assert len(skipped.questions) == 1 and skipped.skipped == 3

    no_answers = write_csv(tmp_path / "t" / "law_test.csv", [[0, "题", "甲", "乙", "丙", "丁"]], CEVAL[:-1])
    with pytest.raises(InputError, match="no answer column .* evaluate val"):
        load_choice(no_answers)
    with pytest.raises(InputError, match=r"a_test\.csv:1: 2 columns; a headerless \(MMLU\) row"):
        load_choice(write_csv(tmp_path / "m" / "a_test.csv", [["only a question", "A"]]))


def test_a_release_root_with_val_and_test_is_refused_and_sizes_are_bounded(tmp_path, monkeypatch):
    import lmforge.evaluate.choice_data as choice_data

    row = [[0, "题", "甲", "乙", "丙", "丁", "A"]]
    write_csv(tmp_path / "ceval" / "val" / "law_val.csv", row, CEVAL)
    write_csv(tmp_path / "ceval" / "test" / "law_test.csv", row, CEVAL)
    with pytest.raises(InputError, match="subject 'law' is in the splits test, val; point at one split"):
        load_choice(tmp_path / "ceval")
    monkeypatch.setattr(choice_data, "MAX_FILE_BYTES", 40)
    with pytest.raises(InputError, match="law_val.csv has .* bytes; a multiple-choice file may have at most 40"):
        load_choice(tmp_path / "ceval" / "val")
    with pytest.raises(InputError, match="does not exist"):
        load_choice(tmp_path / "nowhere")


# --------------------------------------------------------------------------- prompts


def test_prompts_are_the_benchmarks_own_formats():
    data = load_choice("builtin:choice")
    zh = next(q for q in data.questions if q.subject == "chinese_geography")
    en = next(q for q in data.questions if q.subject == "world_geography")
    shot = data.dev["world_geography"][0]
    assert build_prompt(en, [shot], "world geography", "en", "letter") == (
        "The following are multiple choice questions (with answers) about world geography.\n\n"
        "What is the capital of Japan?\nA. Osaka\nB. Kyoto\nC. Tokyo\nD. Nagoya\nAnswer: C\n\n"
        "Which is the largest ocean on Earth?\nA. The Atlantic Ocean\nB. The Indian Ocean\nC. The Pacific Ocean\n"
        "D. The Arctic Ocean\nAnswer:")
    assert build_prompt(zh, [], data.names[zh.subject], "zh", "letter") == (
        "以下是中国关于中国地理考试的单项选择题，请选出其中的正确答案。\n\n"
        "中国面积最大的省级行政区是哪一个？\nA. 西藏自治区\nB. 新疆维吾尔自治区\nC. 内蒙古自治区\nD. 青海省\n答案：")
    assert build_prompt(en, [shot], "world geography", "en", "text").endswith(
        "What is the capital of Japan?\nAnswer: Tokyo\n\nWhich is the largest ocean on Earth?\nAnswer:")
    assert [answer_text(en, i, "en", "letter") for i in range(4)] == [" A", " B", " C", " D"]
    assert answer_text(zh, 1, "zh", "letter") == "B" and answer_text(zh, 1, "zh", "text") == "新疆维吾尔自治区"


def test_without_dev_examples_come_from_the_same_subject_and_never_the_question(tmp_path):
    rows = [{"question": f"Question {i}?", "choices": ["a", "b"], "answer": i % 2} for i in range(8)]
    data = load_choice(write_jsonl(tmp_path / "s.jsonl", rows))
    by_subject = {"s": list(range(8))}
    picks = [examples_for(q, i, data, by_subject, 3, seed=0) for i, q in enumerate(data.questions)]
    assert all(len(p) == 3 and q not in p and len(set(p)) == 3 for q, p in zip(data.questions, picks, strict=True))
    assert picks == [examples_for(q, i, data, by_subject, 3, seed=0) for i, q in enumerate(data.questions)]
    assert picks != [examples_for(q, i, data, by_subject, 3, seed=1) for i, q in enumerate(data.questions)]
    assert len(examples_for(data.questions[0], 0, data, by_subject, 25, seed=0)) == 7  # all the others


# --------------------------------------------------------------------------- token boundary and truncation


class _Greedy:
    """Longest-match tokenizer over a fixed vocabulary: 'ab' is one token, so 'xa' + 'b' merges."""

    vocab = ["ab", "a", "b", "x", " ", ":"]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            piece = next(v for v in self.vocab if text.startswith(v, i))
            ids.append(self.vocab.index(piece))
            i += len(piece)
        return ids


def test_split_continuations_moves_spaces_and_survives_a_merge_across_the_boundary():
    enc = Encoder(_Greedy())
    assert enc.prefix == []  # no BOS, no <|endoftext|>
    ctx, conts = split_continuations(enc, "x: ", ["a", "b"])
    assert ctx == [3, 5] and conts == [[4, 1], [4, 2]]  # the context's trailing space is scored with the answer
    ctx, conts = split_continuations(enc, "xa", ["b", "x"])  # 'xa'+'b' encodes as x, ab: 'a' merged away
    assert ctx == [3, 1] and conts == [[2], [3]]


def test_long_prompts_drop_the_earliest_examples_then_lose_tokens_on_the_left(tok):
    enc = Encoder(tok)
    data = load_choice("builtin:choice")
    q = next(q for q in data.questions if q.subject == "basic_science")
    e0, e1 = data.dev["basic_science"][:2]
    name = data.names[q.subject]
    bare, _ = fit(q, [], name, "zh", "text", enc, None)
    one, _ = fit(q, [e1], name, "zh", "text", enc, None)
    longest = max(len(c) for c in one.continuations)
    item, dropped = fit(q, [e0, e1], name, "zh", "text", enc, len(one.context) + longest - 1)
    assert (item.shots, dropped, item.truncated, item.context) == (1, 1, False, one.context)
    limit = len(bare.context) + longest - 1 - 7
    item, dropped = fit(q, [e0, e1], name, "zh", "text", enc, limit)
    assert (item.shots, dropped, item.truncated) == (0, 2, True)
    assert enc.prefix == [tok.token_to_id("<|endoftext|>")]  # kept: tokens are cut after it
    assert item.context == enc.prefix + bare.context[1 + 7 :] and len(item.context) + longest - 1 == limit


# --------------------------------------------------------------------------- exact scores


def _bpe(specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [p.read_text(encoding="utf-8") for p in sorted(BUILTIN_DIR.rglob("*.csv"))] * 3
    texts += ["Answer: A\nAnswer: B\nAnswer: C\nAnswer: D\n答案：A"] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


@pytest.fixture(scope="module")
def tok():
    return _bpe(["<|endoftext|>"])


@pytest.fixture(scope="module", params=["llama", "gpt_neox"])
def hf_pair(request, tmp_path_factory):
    """(transformers model, tokenizer, directory): a Llama (imported into lmforge's GPT; its tokenizer adds
    BOS) and a GPT-NeoX (a family lmforge does not import, so transformers runs it; no BOS)."""
    from tokenizers import processors

    root = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    if request.param == "llama":
        tok = _bpe(["<s>", "</s>"])
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
        config = transformers.LlamaConfig(vocab_size=704, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
        model = transformers.LlamaForCausalLM(config)
    else:
        tok = _bpe(["<|endoftext|>"])
        config = transformers.GPTNeoXConfig(vocab_size=704, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=1024)
        model = transformers.GPTNeoXForCausalLM(config)
    model.save_pretrained(root)
    tok.save(str(root / "tokenizer.json"))
    return model.eval(), tok, root


def _reference(model, tok, prompt: str, continuations: list[str]) -> list[float]:
    """lm-evaluation-harness's recipe, written out: encode the context and context + continuation (with the
    tokenizer's BOS, or <|endoftext|> first), score the tail of the second with the transformers model."""
    eos = tok.token_to_id("<|endoftext|>")
    lead = [eos] if eos is not None else []
    ctx = lead + tok.encode(prompt).ids
    out = []
    for cont in continuations:
        whole = lead + tok.encode(prompt + cont).ids
        assert whole[: len(ctx)] == ctx
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
        out.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx), len(whole))))
    return out


def _sample(data: ChoiceSet, per_subject: int) -> ChoiceSet:
    picked = [q for s in data.subjects for q in [q for q in data.questions if q.subject == s][:per_subject]]
    return replace(data, questions=picked)


@pytest.mark.parametrize("scoring", ["letter", "text"])
def test_scores_equal_a_direct_transformers_computation(hf_pair, scoring, tmp_path):
    reference_model, tok, root = hf_pair
    model, loaded_tok = load_lm(root, device="cpu")
    own = hasattr(model, "features")
    assert own == (root.name.startswith("llama"))  # Llama runs as lmforge's GPT, GPT-NeoX in transformers
    data = _sample(load_choice("builtin:choice"), 2)
    result = run_choice(model, loaded_tok, data, shots=1, scoring=scoring, batch_size=3,
                        predictions=tmp_path / "p.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == result["questions"] == 8
    for q, row in zip(data.questions, rows, strict=True):
        lang = data.langs[q.subject]
        prompt = build_prompt(q, data.dev[q.subject][:1], data.names[q.subject], lang, scoring)
        expected = _reference(reference_model, tok, prompt, [answer_text(q, i, lang, scoring) for i in range(4)])
        assert row["scores"] == pytest.approx(expected, rel=1e-5, abs=1e-4)
        assert row["predicted"] == "ABCD"[max(range(4), key=expected.__getitem__)]
        if scoring == "text":
            norm = [s / len(o) for s, o in zip(expected, q.options, strict=True)]
            assert row["scores_norm"] == pytest.approx(norm, rel=1e-5, abs=1e-4)
    assert result["correct"] == sum(r["correct"] for r in rows) and result["shots_used_mean"] == 1.0
    if scoring == "letter":  # every letter is one token here: one forward pass per question
        enc = Encoder(loaded_tok)
        for prompt, gap in (("Answer:", " "), ("答案：", "")):
            assert [len(c) for c in split_continuations(enc, prompt, [gap + x for x in "ABCD"])[1]] == [1] * 4


# --------------------------------------------------------------------------- accuracy follows the model


def _prefers(letter_ids: list[int], vocab: int):
    """A real GPT whose every output favours `letter_ids`: its final norm emits a constant vector that
    only those rows of the output layer read."""
    from lmforge.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=vocab, block_size=512, n_layer=1, n_head=2, n_embd=16, norm="layernorm",
                        bias=True, tie_embeddings=False))
    with torch.no_grad():
        gpt.transformer.ln_f.weight.zero_()
        gpt.transformer.ln_f.bias.zero_()
        gpt.transformer.ln_f.bias[0] = 1.0
        gpt.lm_head.weight.zero_()
        gpt.lm_head.weight[letter_ids, 0] = 10.0
    return gpt.eval()


def test_accuracy_is_the_share_of_questions_the_preferred_letter_answers(tok):
    enc = Encoder(tok)
    b_ids = [split_continuations(enc, cue, [gap + "B"])[1][0][-1] for cue, gap in (("Answer:", " "), ("答案：", ""))]
    data = load_choice("builtin:choice")
    model = _prefers(b_ids, tok.get_vocab_size())
    result = run_choice(model, tok, data, shots=2, scoring="letter")
    for subject, entry in result["subjects"].items():
        answers = [q.answer for q in data.questions if q.subject == subject]
        assert entry["accuracy"] == pytest.approx(answers.count(1) / len(answers))
    share = sum(q.answer == 1 for q in data.questions) / 40
    assert result["accuracy"] == pytest.approx(share) and share < 0.5
    only_b = replace(data, questions=[q for q in data.questions if q.answer == 1])
    assert run_choice(model, tok, only_b, scoring="letter")["accuracy"] == 1.0


# --------------------------------------------------------------------------- the command and the shipped set


def test_evaluate_command_writes_report_and_predictions(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "tests" / "serve"))
    from serving import make_tiny_run

    from lmforge.cli.main import main

    run = make_tiny_run(tmp_path / "tiny", block_size=256)
    out = tmp_path / "ev"
    code = main(["evaluate", str(run), "builtin:choice", "--metrics", "choice", "--shots", "1",
                 "--choice-scoring", "text", "--device", "cpu", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().err
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["questions"] == 40 and report["scoring"] == "text" and report["subject_count"] == 4
    assert set(report["languages"]) == {"zh", "en"} and report["languages"]["zh"]["questions"] == 20
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 40 and sum(r["correct"] for r in rows) == report["correct"]
    assert report["accuracy"] == pytest.approx(report["correct"] / 40)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| subject | name | language | questions | correct | accuracy | correct_norm | accuracy_norm |" in md
    assert "| chinese_geography | 中国地理 | zh | 10 |" in md and "| chinese_geography | 中国地理 | zh | 10 |" in printed
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<h2>Evaluation" in html and "by subject" in html and "中国地理" in html

    bad = write_csv(tmp_path / "bad" / "law_val.csv", [[0, "题", "甲", "乙", "丙", "丁", "Z"]], CEVAL)
    assert main(["evaluate", str(run), str(bad), "--metrics", "choice"]) == 2
    err = capsys.readouterr().err
    assert "law_val.csv:2: answer 'Z' is not one of A, B, C, D" in err and "Traceback" not in err


def test_the_shipped_set_is_bilingual_licensed_and_packaged():
    data = load_choice("builtin:choice")
    counts = {s: sum(q.subject == s for q in data.questions) for s in data.subjects}
    assert counts == {"basic_science": 10, "chinese_geography": 10, "computer_basics": 10, "world_geography": 10}
    assert data.langs == {"basic_science": "zh", "chinese_geography": "zh", "computer_basics": "en",
                          "world_geography": "en"}
    assert {s: len(v) for s, v in data.dev.items()} == dict.fromkeys(counts, 5)
    assert sorted({q.answer for q in data.questions}) == [0, 1, 2, 3]
    readme = (BUILTIN_DIR / "README.md").read_text(encoding="utf-8")
    assert "written for lmforge" in readme and "Apache-2.0" in (BUILTIN_DIR / "LICENSE").read_text(encoding="utf-8")
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "Apache-2.0"
    patterns = project["tool"]["setuptools"]["package-data"]["lmforge"]
    package = ROOT / "src" / "lmforge"
    for file in BUILTIN_DIR.rglob("*"):
        if file.is_file():
            rel = file.relative_to(package).as_posix()
            assert any(fnmatch.fnmatch(rel, p) and rel.count("/") == p.count("/") for p in patterns), rel


def test_items_hold_every_option(tok):
    """Options of any count (2 to 10) are scored, letters beyond D included."""
    data = load_choice("builtin:choice")
    q = replace(data.questions[0], options=("1", "2", "3", "4", "5"), answer=4)
    item, _ = fit(q, [], "x", "en", "letter", Encoder(tok), None)
    assert isinstance(item, Item) and len(item.continuations) == 5
