from pathlib import Path

import pytest

from lmforge.errors import ConfigError
from lmforge.flow import run_recipe
from lmforge.flow.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert any(p.name == "demo.yaml" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(path):
    recipe = load_recipe(path)
    assert recipe.input is not None or recipe.finetune is not None or recipe.augment is not None
    for _name, cfg in recipe.stage_specs():
        assert isinstance(cfg, dict)


def error_for(tmp_path, body: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "\n" not in message, "errors must be one line"
    assert message.startswith(str(path))
    return message


BASE = "input: {builtin: {}}\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (BASE + "pretrian: {steps: 3}\n", "pretrian: unknown key"),
        (BASE + "pretrain: {steps: many}\n", "pretrain.steps: Input should be a valid integer, unable to parse string as an integer (got 'many')"),
        (BASE + "pretrain: {steps: 0}\n", "pretrain.steps: Input should be greater than 0 (got 0)"),
        (BASE + "pretrain: {model: {preset: huge}}\n", "pretrain.model.preset: not a gpt preset; allowed: gpt2-124m"),
        (BASE + "pretrain: {model: {n_layr: 4}}\n",
         "pretrain.model.n_layr: unknown key for arch gpt; allowed: preset, from, block_size, n_layer, n_head"),
        (BASE + "pretrain: {preset: tiny, model: {preset: small}}\n", "pretrain: preset and model.preset are both given"),
        (BASE + "tokenizer: {vocab_size: 10}\n", "tokenizer: vocab_size must be at least 256 + 4 special tokens = 260 (got 10)"),
        (BASE + "executor: {kind: slurm}\n", "executor.kind: must be one of 'local' or 'ray' (got 'slurm')"),
        (BASE + "pipeline:\n  - normalise: {}\n", "pipeline[0]: unknown stage 'normalise'; allowed: back_translate, bad_words, boilerplate_lines, c4"),
        (BASE + "pipeline:\n  - length_filter: {min_chars: lots}\n", "pipeline[0].length_filter.min_chars: Input should be a valid integer"),
        (BASE + "pipeline:\n  - length_filter: {min_char: 3}\n", "pipeline[0].length_filter.min_char: unknown key"),
        (BASE + "pipeline:\n  - {normalize: {}, strip_html: {}}\n", "pipeline: entry [0] must be a single-key mapping"),
        ("input: {shard_size: 5}\n", "input: give at least one source of builtin, files, warc, crawl, sql, api, dataset"),
        ("input: {builtin: {corpora: [wikipedia]}}\n", "input.builtin.corpora[0]: must be one of"),
        ("pipeline: []\n", "a recipe needs an 'input' section (data steps), or a 'finetune', 'augment', 'label' or 'evaluate' section"),
        ("- just\n- a list\n", "a recipe must be a mapping of steps"),
        ("input: {builtin: {}\n  pipeline: [\n", "invalid YAML at line"),
    ],
)
def test_invalid_recipes_name_the_field(tmp_path, body, expected):
    assert expected in error_for(tmp_path, body)


def test_missing_recipe_and_missing_input_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    path = tmp_path / "r.yaml"
    path.write_text("input: {files: [data/*.jsonl]}\n")
    recipe = load_recipe(path)
    with pytest.raises(ConfigError, match=r"input.files.paths\[0\]: no file matches 'data/\*.jsonl'"):
        run_recipe(recipe, tmp_path / "run", base_dir=tmp_path)


def test_yaml_tags_are_not_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("input: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_recipe(path)
