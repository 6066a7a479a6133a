"""The key contract: every family builds keys that parse back into the same parts, whatever the
names hold, and two distinct sets of parts never share a key."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from gradwandb import keys as K
from gradwandb.keys import (
    Keys,
    ParsedKey,
    act_key,
    bptt_key,
    escape_name,
    health_key,
    parse_key,
    rnn_key,
    split_param_key,
    unescape,
)

# Characters that break naive splitting or escaping, next to ordinary ones.
ALPHABET = ["a", "b", "0", "1", ".", "_", " ", "/", "%", "2", "F", "é", "中", "🙂", "\t", "-"]
TRICKY = ["", "/", "%", "%2F", "%25", "%%", "a/b", "/a", "a/", "//", "all", "%61ll", "critic",
          "critic/0.weight", "0.weight", "grad_norm", "grad", "a b", "ü/ö"]  # fmt: skip
STATS = ["global_norm", "clip_coef", "clip_zscore", "spike_z", "horizon", "mean", "sigma_max"]


def names(rng: random.Random, count: int) -> list[str]:
    """Tricky names first, then random strings of up to 8 characters from ALPHABET."""
    out = list(TRICKY)
    while len(out) < count:
        out.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 8))))
    return out


def tags(rng: random.Random) -> list[str | None]:
    return [None, *[n for n in names(rng, 40) if n]]  # an empty tag means no tag


def build(parts: ParsedKey) -> str:
    """The key of ``parts`` through the builders the live code calls."""
    keys = Keys(parts.tag)
    if parts.family == K.RNN_WEIGHTS:
        assert parts.subject is not None and parts.weight is not None
        return rnn_key(keys, parts.subject, parts.weight, parts.gate, parts.statistic)
    if parts.family == K.BPTT:
        assert parts.subject is not None
        return bptt_key(keys, parts.subject, parts.statistic)
    if parts.family == K.ACT:
        assert parts.subject is not None
        return act_key(keys, parts.subject, parts.statistic)
    if parts.family == K.HEALTH:
        return health_key(keys, parts.statistic)
    if parts.subject is None:
        return keys.scalar(f"{parts.family}/{parts.statistic}")
    return keys.param(parts.family, parts.subject)


def every_family(seed: int, per_family: int = 300) -> list[ParsedKey]:
    """Random parts for every family, hostile names included."""
    rng = random.Random(seed)
    pool, tag_pool = names(rng, 120), tags(rng)
    out: list[ParsedKey] = []
    for _ in range(per_family):
        tag = rng.choice(tag_pool)
        for section in K.RUN_SECTIONS:
            out.append(ParsedKey(section, tag, None, rng.choice(STATS)))
        for family in K.PARAM_FAMILIES:
            out.append(ParsedKey(family, tag, rng.choice(pool), family))
        for section in K.MODULE_SECTIONS:
            out.append(ParsedKey(section, tag, rng.choice(pool), rng.choice(STATS)))
        gate = rng.choice([None, None, "i", "f", "r", "z", *[n for n in pool if n]])
        out.append(
            ParsedKey(
                K.RNN_WEIGHTS, tag, rng.choice(pool), rng.choice(STATS), rng.choice(pool), gate
            )
        )
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_family_round_trips(seed: int) -> None:
    for parts in every_family(seed):
        key = build(parts)
        assert parse_key(key) == parts, key
        assert parts.key() == key


def test_distinct_parts_never_share_a_key() -> None:
    seen: dict[str, ParsedKey] = {}
    for seed in range(3):
        for parts in every_family(seed):
            key = build(parts)
            assert seen.setdefault(key, parts) == parts, f"{key!r}: {seen[key]} and {parts}"
    assert len(seen) > 5000


def test_segments_never_hold_a_raw_slash() -> None:
    expected = {K.RNN_WEIGHTS: 5, K.BPTT: 3, K.ACT: 3}
    for parts in every_family(3, per_family=50):
        key = build(parts)
        count = expected.get(parts.family, 2) + (parts.tag is not None)
        assert key.count("/") + 1 == count, key


def test_common_keys_read_as_before() -> None:
    assert Keys().param("grad_norm", "encoder.weight") == "grad_norm/encoder.weight"
    assert Keys().scalar(K.GLOBAL_NORM) == "grad/global_norm"
    assert bptt_key(Keys(), "encoder", K.HORIZON) == "bptt/encoder/horizon"
    assert act_key(Keys(), "net.1", K.MEAN) == "act/net.1/mean"
    assert health_key(Keys(), K.H_SPIKE_Z) == "health/spike_z"
    assert (
        rnn_key(Keys(), "enc", "weight_hh_l0", "f", K.SIGMA_MAX)
        == "rnn/enc/weight_hh_l0/f/sigma_max"
    )
    assert Keys("critic").param("grad_hist", "0.weight") == "grad_hist/critic/0.weight"
    assert Keys("").scalar(K.STEP) == Keys().scalar(K.STEP) == "gradwandb/step"


def test_escaped_names() -> None:
    assert Keys().param("grad_norm", "critic/0.weight") == "grad_norm/critic%2F0.weight"
    assert Keys("a/b").scalar(K.CLIP_COEF) == "grad/a%2Fb/clip_coef"
    assert Keys("critic").param("grad_norm", "critic") == "grad_norm/critic/critic"
    assert (
        rnn_key(Keys(), "rnn", "weight_hh_l0", None, K.SIGMA_MAX)
        == "rnn/rnn/weight_hh_l0/all/sigma_max"
    )
    assert (
        rnn_key(Keys(), "rnn", "weight_hh_l0", "all", K.SIGMA_MAX)
        == "rnn/rnn/weight_hh_l0/%61ll/sigma_max"
    )
    for name in names(random.Random(4), 200):
        assert unescape(escape_name(name)) == name
        assert "/" not in escape_name(name)


def test_scopes_and_parts() -> None:
    assert parse_key("grad/global_norm") == ParsedKey("grad", None, None, "global_norm")
    assert parse_key("gradwandb/critic/findings") == ParsedKey(
        "gradwandb", "critic", None, "findings"
    )
    assert parse_key("charts/grad_flow") == ParsedKey("charts", None, None, "grad_flow")
    p = parse_key("grad_norm/critic/critic")
    assert p is not None and (p.tag, p.subject, p.scope) == ("critic", "critic", K.PARAM)
    p = parse_key("bptt/critic/gru/curve")
    assert p is not None and (p.tag, p.subject, p.statistic, p.scope) == (
        "critic",
        "gru",
        "curve",
        K.MODULE,
    )
    p = parse_key("rnn/gru/weight_hh_l0/all/sigma_max")
    assert p is not None and (p.tag, p.gate, p.scope) == (None, None, K.RNN)
    assert parse_key("grad/clip_zscore") == ParsedKey("grad", None, None, "clip_zscore")
    assert split_param_key("grad_norm/critic%2F0.weight") == ("grad_norm", None, "critic/0.weight")
    assert split_param_key("grad/global_norm") is None


@pytest.mark.parametrize(
    "key",
    ["loss", "_step", "nest.x", "grad_norm", "grad_norm/a/b/c", "grad/x%zz", "grad/", "grad/a/b/c",
     "bptt/enc", "bptt/a/b/c/d", "rnn/m/w/s", "rnn/m/w//s", "act/m/", "grad//global_norm",
     "unknown_family/0.weight", "grad/1abc", "grad/has space"],
)  # fmt: skip
def test_keys_gradwandb_does_not_write(key: str) -> None:
    assert parse_key(key) is None


def test_plug_in_families() -> None:
    assert parse_key("grad_snr/0.weight") is None
    assert parse_key("grad_snr/0.weight", families=["grad_snr"]) == ParsedKey(
        "grad_snr", None, "0.weight", "grad_snr"
    )
    try:
        assert K.register_family("grad_snr") == "grad_snr"
        assert "grad_snr" in K.param_families()
        key = Keys("critic").param("grad_snr", "a/b")
        assert parse_key(key) == ParsedKey("grad_snr", "critic", "a/b", "grad_snr")
        assert K.register_family("grad_snr") == "grad_snr"  # idempotent
    finally:
        K.unregister_family("grad_snr")
    assert parse_key("grad_snr/0.weight") is None
    for bad in ["grad", "bptt", "gradwandb", "a/b", "", "1x", "x.y", "x%"]:
        with pytest.raises(ValueError):
            K.register_family(bad)


def test_keys_module_does_not_import_torch() -> None:
    # gradwandb/__init__ pulls in the live wing; load the module file on its own instead.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('k', {K.__file__!r})\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['k'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
