"""Back-translation and contextual substitution through tiny models built here (none can be downloaded).

The models are random, so these tests check the code path (batching, padding, the chrF band,
the mask-to-replacement mapping, protected spans, meta fields), not quality. The masked LMs get a
large output bias on "好" and "good", so with top_k=1 every replacement is known in advance.
"""

import pytest

from lmforge.pipeline import run_chain
from lmforge.records import Record

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENGLISH = "the room was quiet and clean staff were friendly breakfast cold good bad hotel small not"
WORDS = ENGLISH.split()
CHARS = sorted(set("这家酒店的房间很干净服务也热情价格偏高早餐太少好北京不"))
TEXTS = ["这家酒店的房间很干净", "服务也很热情", "the room was quiet and clean", "the staff were friendly",
         "价格偏高早餐太少"]


@pytest.fixture(scope="module")
def tokenizer():
    """A BERT-style WordPiece tokenizer over a fixed vocabulary: Chinese per character, English words."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *CHARS, *WORDS, ",", ".", "，"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", eos_token="[SEP]")


def bias_towards_good(bias, tokenizer):
    """Make "好" and "good" the top predictions at every position (the output layer's bias)."""
    import torch

    with torch.no_grad():
        for word in ("好", "good"):
            bias[tokenizer.convert_tokens_to_ids(word)] = 40.0


@pytest.fixture(scope="module")
def hf_mlm(tmp_path_factory, tokenizer):
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32, max_position_embeddings=64))
    bias_towards_good(model.get_output_embeddings().bias, tokenizer)
    out = tmp_path_factory.mktemp("hf_mlm")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lmforge_bert(tmp_path_factory, tokenizer):
    """An lmforge BERT checkpoint in a run directory's layout: RUN/pretrain/checkpoint + RUN/tokenizer."""
    import torch

    from lmforge.models.bert import BertForPretraining, bert_config_from_preset
    from lmforge.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    bert = BertForPretraining(bert_config_from_preset("bert-tiny", len(tokenizer)))
    bias_towards_good(bert.decoder.bias, tokenizer)
    run = tmp_path_factory.mktemp("bert_run")
    tokenizer.save_pretrained(run / "tokenizer")
    return save_checkpoint(bert, bert.config, run / "pretrain" / "checkpoint")


@pytest.fixture(scope="module")
def marian(tmp_path_factory, tokenizer):
    import torch
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(0)
    cfg = MarianConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                       encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                       max_position_embeddings=64, pad_token_id=0, eos_token_id=3, decoder_start_token_id=0,
                       init_std=0.5)  # large weights: outputs that depend on the input
    out = tmp_path_factory.mktemp("marian")
    MarianMTModel(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def records(texts, split="train"):
    return [Record(id=f"r{i}", text=t, meta={"label": "pos", "split": split}) for i, t in enumerate(texts)]


# --------------------------------------------------------------------------- back-translation


def test_translator_batches_and_returns_one_list_per_text(marian):
    from lmforge.augment.backtranslate import Translator, TranslatorConfig

    tr = Translator(marian, TranslatorConfig(max_new_tokens=8))
    assert tr.kind == "seq2seq"
    out = tr.translate(TEXTS, batch_size=2)
    assert tr.generate_calls == 3 and len(out) == 5 and all(len(o) == 1 for o in out)
    assert out == Translator(marian, TranslatorConfig(max_new_tokens=8)).translate(TEXTS, batch_size=5)
    sampled = tr.translate(TEXTS, batch_size=4, num_return=3, sample=True)
    assert tr.generate_calls == 5 and [len(o) for o in sampled] == [3] * 5


def test_chrf_band_keeps_exactly_the_round_trips_inside_it(marian):
    from lmforge.augment.backtranslate import BackTranslateConfig, BackTranslator, sentence_chrf

    base = {"forward": str(marian), "backward": str(marian), "batch_size": 2, "num_aug": 6, "sample": True,
            "forward_options": {"max_new_tokens": 8}, "backward_options": {"max_new_tokens": 8}}
    everything = BackTranslator(BackTranslateConfig(**base, min_chrf=0, max_chrf=100))
    all_trips = everything.round_trips(TEXTS, seed=1)
    scores = sorted(a.details["chrf"] for trips in all_trips for a in trips)
    distinct = sorted(set(scores))
    assert len(distinct) >= 5, "the tiny model gave too little variety to test a band"
    # the lowest and the highest scores fall outside (edges between scores: meta rounds chrF to 0.01)
    lo, hi = (distinct[0] + distinct[1]) / 2, (distinct[-2] + distinct[-1]) / 2
    banded = BackTranslator(BackTranslateConfig(**base, min_chrf=lo, max_chrf=hi))
    kept = banded.round_trips(TEXTS, seed=1)
    for source, trips, every in zip(TEXTS, kept, all_trips, strict=True):
        assert [a.text for a in trips] == [a.text for a in every if lo <= a.details["chrf"] <= hi]
        for a in trips:
            assert a.op == "back_translation" and a.details["pivot"]
            assert abs(sentence_chrf(a.text, source) - a.details["chrf"]) < 0.01
    assert banded.filtered.get("bt_too_far", 0) > 0 and banded.filtered.get("bt_too_close", 0) > 0
    assert sum(banded.filtered.values()) == len(TEXTS) * 6 - sum(len(t) for t in kept)


def test_back_translate_stage_meta_and_what_it_leaves_alone(marian):
    from lmforge.augment.backtranslate import BackTranslateStage

    stage = BackTranslateStage(forward=str(marian), backward=str(marian), batch_size=3, num_aug=2, sample=True,
                               min_chrf=0, max_chrf=100, forward_options={"max_new_tokens": 8},
                               backward_options={"max_new_tokens": 8})
    recs = records(TEXTS) + records(["服务很好"], split="test")
    recs.append(Record(id="ner", text="北京很好", meta={"label": [[0, 2, "LOC"]], "split": "train"}))
    out, stats = run_chain([stage], recs)
    out = list(out)
    copies = [r for r in out if "augmented_from" in r.meta]
    assert copies and {c.meta["augmented_from"] for c in copies} <= {f"r{i}" for i in range(5)}
    for c in copies:
        assert c.meta["augment"]["stage"] == "back_translate" and c.meta["label"] == "pos"
        assert 0 <= c.meta["augment"]["chrf"] <= 100 and isinstance(c.meta["augment"]["pivot"], str)
    assert stats[0].counters["ner_not_supported"] == 1 and stats[0].counters["split_test_kept_as_is"] == 1


def test_causal_translator_left_pads_so_batches_match_single_texts(tmp_path, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmforge.augment.backtranslate import Translator, TranslatorConfig

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                 pad_token_id=0, bos_token_id=2, eos_token_id=3)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    opts = TranslatorConfig(prompt="translate : {text} =", max_new_tokens=6)
    tr = Translator(tmp_path, opts)
    assert tr.kind == "causal" and tr.tokenizer.padding_side == "left"
    together = tr.translate(TEXTS[:3], batch_size=3)
    alone = [tr.translate([t], batch_size=1)[0] for t in TEXTS[:3]]
    assert together == alone
    assert not any(o[0].startswith("translate") for o in together)  # the prompt is not part of the output


def test_lmforge_fine_tuned_gpt_translates_like_fine_tuning_scores_it(tmp_path):
    from transformers import AutoTokenizer

    from lmforge.augment.backtranslate import Translator, TranslatorConfig
    from lmforge.models.gpt import GPT, config_from_preset
    from lmforge.models.heads import CausalLMAdapter, save_task_model
    from lmforge.serve.generate import generate_responses
    from lmforge.tokenize.bpe import TokenizerConfig, train_tokenizer

    tok_dir = train_tokenizer(TEXTS * 4, TokenizerConfig(vocab_size=300), tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    model = CausalLMAdapter(GPT(config_from_preset("tiny", len(tok))))
    save_task_model(model, tmp_path / "mt", {"kind": "instruction", "labels": []}, tok)
    tr = Translator(tmp_path / "mt", TranslatorConfig(prompt="翻译：{text}", max_new_tokens=5))
    assert tr.kind == "lmforge"
    got = tr.translate(TEXTS[:2], batch_size=2)
    assert got == [[a] for a in generate_responses(tr.model, ["翻译：" + t for t in TEXTS[:2]], tok, 5)]


def test_a_directory_that_is_not_a_model_is_a_clear_error(tmp_path):
    from lmforge.augment.backtranslate import Translator
    from lmforge.errors import ConfigError

    with pytest.raises(ConfigError, match="no config.json or finetune.json"):
        Translator(tmp_path)


# --------------------------------------------------------------------------- contextual substitution


@pytest.mark.parametrize("which", ["hf_mlm", "lmforge_bert"])
def test_contextual_substitution_replaces_the_masked_share_with_model_picks(which, request):
    from lmforge.augment.contextual import ContextualStage

    model = request.getfixturevalue(which)
    zh, en = "这家酒店的房间很干净，服务也很热情。", "the room was quiet and clean."
    stage = ContextualStage(model=str(model), top_k=1, fraction=0.3, num_aug=3)
    out = list(run_chain([stage], records([zh, en]))[0])
    copies = [r for r in out if "augmented_from" in r.meta]
    assert len(copies) == 6
    for c in copies:
        src = zh if c.meta["augmented_from"] == "r0" else en
        if src == zh:
            changed = [(a, b) for a, b in zip(src, c.text, strict=True) if a != b]  # one character for one
            assert len(changed) == c.meta["augment"]["changes"] == round(0.3 * 16)  # 16 Han characters
            assert all(b == "好" for _, b in changed)
        else:
            changed = [(a, b) for a, b in zip(src.split(), c.text.split(), strict=True) if a != b]
            assert len(changed) == c.meta["augment"]["changes"] == round(0.3 * 6)
            assert all(b.strip(".") == "good" for _, b in changed)


def test_contextual_substitution_never_touches_protected_units_or_entities(hf_mlm):
    from lmforge.augment.contextual import ContextualStage

    text = "北京的酒店不干净，价格很高。"
    recs = [Record(id="x", text=text, meta={"label": [[0, 2, "LOC"]], "split": "train"}),
            Record(id="y", text="the room was not clean.", meta={"label": "neg", "split": "train"})]
    stage = ContextualStage(model=str(hf_mlm), top_k=1, fraction=1.0, num_aug=1)
    out = {r.meta["augmented_from"]: r for r in run_chain([stage], recs)[0] if "augmented_from" in r.meta}
    ner = out["x"]
    assert ner.text.startswith("北京") and ner.meta["label"] == [[0, 2, "LOC"]]
    assert "不干" in ner.text  # the negation and the word it governs (不 + 干净) stay
    assert out["y"].text == "good good good not clean."


def test_same_seed_same_substitutions(hf_mlm):
    from lmforge.augment.contextual import ContextualStage

    def run(seed):
        stage = ContextualStage(model=str(hf_mlm), top_k=5, fraction=0.3, num_aug=2, seed=seed)
        return [r.text for r in run_chain([stage], records(TEXTS))[0]]

    assert run(0) == run(0) and run(0) != run(1)


def test_a_causal_checkpoint_is_refused_for_masking(tmp_path):
    from lmforge.augment.contextual import MaskedLM
    from lmforge.errors import ConfigError
    from lmforge.models.gpt import GPT, config_from_preset
    from lmforge.train.checkpoint import save_checkpoint

    gpt = GPT(config_from_preset("tiny", 300))
    ckpt = save_checkpoint(gpt, gpt.config, tmp_path / "ckpt")
    with pytest.raises(ConfigError, match="needs a masked LM"):
        MaskedLM(ckpt)


# --------------------------------------------------------------------------- embedding neighbours as synonyms


def test_embedding_neighbours_of_an_lmforge_checkpoint_feed_eda(tmp_path, tokenizer):
    """Rows of 好/棒-like pairs made parallel in a GPT's embedding become each other's synonyms."""
    import random

    import torch

    from lmforge.augment.eda import Eda, EdaConfig
    from lmforge.augment.lexicon import EmbeddingNeighbours
    from lmforge.models.gpt import GPT, config_from_preset
    from lmforge.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    gpt = GPT(config_from_preset("tiny", len(tokenizer)))
    ids = tokenizer.convert_tokens_to_ids
    with torch.no_grad():
        wte = gpt.transformer.wte.weight
        wte[ids("热")] = wte[ids("好")] * 1.5  # same direction: cosine 1
        wte[ids("clean")] = wte[ids("quiet")] + 0.01
        wte[ids("good")] = wte[ids("好")] * 2.0  # as close, but another script
    run = tmp_path / "run"
    tokenizer.save_pretrained(run / "tokenizer")
    ckpt = save_checkpoint(gpt, gpt.config, run / "pretrain" / "checkpoint")
    near = EmbeddingNeighbours(ckpt, k=3)
    assert near("好")[0] == "热" and near("quiet")[0] == "clean"
    assert "good" not in near("好") and "好" not in near("good")  # neighbours share the word's script
    assert near("马悦凌") == []  # not one token of the vocabulary

    eda = Eda(EdaConfig(alpha_sr=1.0, alpha_ri=0, alpha_rs=0, p_rd=0, zh_synonyms="embedding",
                        embedding={"model": str(ckpt), "k": 1}))
    (copy,) = eda.augment("好", "zh", random.Random(0), 1)
    assert copy.text == "热" and copy.op == "synonym_replacement"
