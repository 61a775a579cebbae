"""Random invalid configs never crash with an internal error: always a validation message."""
from hypothesis import given, settings, strategies as st

import nftkit
from nftkit.config import PurifyConfig
from nftkit.experiment import prepare

KEYS = list(PurifyConfig.model_fields) + ["stepz", "lr_", "", "method.x", "alpha beta"]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6))
def test_resolve_config_validates_or_says_why(raw):
    try:
        cfg = nftkit.resolve_config(**raw) if "method" not in raw or isinstance(raw.get("method"), str) else nftkit.resolve_config(config=raw)
    except nftkit.ConfigError as err:
        assert str(err)
    else:
        assert isinstance(cfg, PurifyConfig)


SECTIONS = st.sampled_from(["data", "model", "attack", "victim", "defense", "seed", "device", "bogus"])
OVERRIDE = st.builds(lambda s, k, v: f"{s}.{k}={v}" if k else f"{s}={v}", SECTIONS,
                     st.one_of(st.just(""), st.sampled_from(["steps", "lr", "arch", "name", "dataset", "x", "mode"])),
                     st.one_of(st.text(alphabet="ab1.-[]{}:", max_size=6), st.integers().map(str)))


@settings(max_examples=150, deadline=None)
@given(st.lists(OVERRIDE, max_size=3))
def test_recipe_overrides_validate_or_say_why(overrides):
    try:
        prepare("image/fmnist_badnets", overrides)
    except nftkit.ConfigError as err:
        assert str(err)
