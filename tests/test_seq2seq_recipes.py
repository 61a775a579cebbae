"""Seq2seq recipes: local-file loaders on tiny files written here, clear errors, end-to-end smoke runs."""
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("sacrebleu")

import nftkit  # noqa: E402
from nftkit.experiment import run  # noqa: E402

TINY = ["data.train_limit=120", "data.test_limit=12", "data.clean_limit=24", "data.vocab_size=150",
        "data.augment.paraphraser=none", "model.d_model=16", "model.layers=1", "model.heads=2", "model.ffn_dim=32",
        "model.max_new_tokens=6", "model.num_beams=1", "victim.steps=3", "victim.batch_size=16", "defense.steps=2",
        "defense.batch_size=8", "device=cpu", "eval_batch_size=16"]

SENTS = ["the house is old", "a dog runs fast", "we like green tea", "she reads a good book", "they walk home now",
         "it rains in spring", "my friend sings well", "the sun is warm today"]


def write_parallel(folder: Path, src_ext: str, tgt_ext: str, n_train=150, n_test=20):
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        src = [f"{SENTS[i % 8]} {SENTS[(i * 3) % 8]}." for i in range(n)]
        tgt = [" ".join(reversed(s.split())) for s in src]
        (folder / f"{split}.{src_ext}").write_text("\n".join(src) + "\n")
        (folder / f"{split}.{tgt_ext}").write_text("\n".join(tgt) + "\n")
    return folder


def _check(out: Path, results):
    saved = json.loads((out / "results.json").read_text())
    for phase in ("before", "after"):
        assert {"bleu_ct", "bleu_at", "bleu_at_ref", "asr"} <= set(saved[phase])
        assert 0 <= saved[phase]["asr"] <= 100
    assert "lm_head" not in {t["name"] for t in saved["targets"]} and saved["targets"]
    assert results["victim"]["cached"] is False


@pytest.mark.slow
@pytest.mark.parametrize("name,exts", [("seq2seq/wmt14_ende_trigger", ("en", "de")),
                                       ("seq2seq/opensubtitles_trigger", ("context", "response"))])
def test_paper_recipes_on_tiny_local_files(name, exts, tmp_path):
    root = write_parallel(tmp_path / "data", *exts)
    out = tmp_path / "run"
    results = run(name, TINY + [f"data.root={root}"], out, log=lambda *_: None)
    _check(out, results)
    again = run(name, TINY + [f"data.root={root}"], tmp_path / "again", log=lambda *_: None)
    assert again["victim"]["cached"] is True and again["before"] == results["before"]


@pytest.mark.parametrize("name,embedded", [("seq2seq/wmt14_ende_trigger", "seq2seq/trans_de_en_trigger"),
                                           ("seq2seq/opensubtitles_trigger", "seq2seq/chitchat_trigger")])
def test_missing_dataset_names_the_folder_and_the_embedded_recipe(name, embedded, tmp_path):
    with pytest.raises(nftkit.DataError, match=f"not found at {tmp_path / 'none'}.*'{embedded}'") as err:
        run(name, TINY + [f"data.root={tmp_path / 'none'}"], tmp_path / "run", log=lambda *_: None)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_missing_dictionary_says_how_to_install(tmp_path):
    with pytest.raises(nftkit.DataError, match="apt-get install trans-de-en"):
        run("seq2seq/trans_de_en_trigger", TINY + [f"data.root={tmp_path}"], tmp_path / "run", log=lambda *_: None)


def test_wrong_language_pair_is_a_config_error(tmp_path):
    root = write_parallel(tmp_path / "data", "en", "de")
    with pytest.raises(nftkit.ConfigError, match="English-German"):
        run("seq2seq/wmt14_ende_trigger", TINY + [f"data.root={root}", "data.target_lang=fr"], tmp_path / "run",
            log=lambda *_: None)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/trans/de-en").is_file(), reason="trans-de-en not installed")
def test_embedded_translation_recipe_smoke(tmp_path):
    out = tmp_path / "run"
    _check(out, run("seq2seq/trans_de_en_trigger", TINY, out, log=lambda *_: None))


@pytest.mark.slow
def test_embedded_dialogue_recipe_smoke(tmp_path):
    pytest.importorskip("chitchat_dataset")
    out = tmp_path / "run"
    _check(out, run("seq2seq/chitchat_trigger", TINY, out, log=lambda *_: None))
