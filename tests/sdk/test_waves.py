"""Which boards a push reaches and when: tag queries, wave plans and the gates between waves."""

from __future__ import annotations

import pytest

from edgec.errors import ValidationError
from edgec.runtime.config import ServeConfig
from edgec.sdk.fleet.rollout import FAILED
from edgec.sdk.fleet.waves import Record, Wave, describe, matches, parse_waves, parse_where, plan_waves, tags_of

BOARDS = [f"pi-{i:02d}" for i in range(1, 21)]


def test_where_takes_repeated_or_comma_separated_terms_and_refuses_anything_else():
    assert parse_where(["site=shop-3,hw=rpi4", "os=bookworm"]) == {"site": "shop-3", "hw": "rpi4", "os": "bookworm"}
    for bad in (["site"], ["=x"], ["site=a b"], ["site=x/y"], ["site=a", "site=b"]):
        with pytest.raises(ValidationError, match="--where"):
            parse_where(bad)
    assert parse_where(None) == {}


def test_a_board_matches_when_it_declares_every_tag_and_odd_tags_from_the_broker_match_nothing():
    member = {"tags": {"site": "shop-3", "hw": "rpi4"}}
    assert matches(member, {"hw": "rpi4"}) and matches(member, {})
    assert not matches(member, {"hw": "rpi4", "site": "shop-4"})
    assert not matches({"tags": ["hw", "rpi4"]}, {"hw": "rpi4"}) and not matches({"tags": {"hw": 4}}, {"hw": "4"})


def test_waves_are_counts_or_shares_and_the_rest_comes_last():
    assert plan_waves(BOARDS, parse_waves("1,10%,rest")) == [BOARDS[:1], BOARDS[1:3], BOARDS[3:]]
    assert plan_waves(BOARDS, parse_waves(None, canary=2)) == [BOARDS[:2], BOARDS[2:]]
    assert plan_waves(BOARDS, parse_waves(None)) == [BOARDS]
    assert plan_waves(BOARDS[:3], parse_waves("1,100%")) == [BOARDS[:1], BOARDS[1:3], []]  # the target's own, last
    for bad in ("0", "x", "150%", "1,,-2"):
        with pytest.raises(ValidationError, match="--waves"):
            parse_waves(bad)
    with pytest.raises(ValidationError, match="--canary K is --waves K"):
        parse_waves("1", canary=1)
    with pytest.raises(ValidationError, match="takes all 3 board"):
        plan_waves(BOARDS[:3], ["3"])


def _record(states: list[dict[str, str]], abort: float | None = None, success: float = 1.0) -> Record:
    waves = [Wave(list(s), started=True, states=s) for s in states]
    return Record("digits", "0123456789ab", "r1", "group/lab", {}, success, abort, waves)


def test_a_failure_before_the_last_wave_rolls_back_unless_an_abort_rate_allows_it():
    canary_failed = _record([{"a": "rolled_back"}, {"b": "pending"}])
    assert canary_failed.gate(0, FAILED) == ("rolled_back", "wave 1 (canary): 1 of 1 failed")
    tolerant = _record([{"a": "live", "b": "live", "c": "live", "d": "refused"}, {}], abort=0.3, success=0.75)
    assert tolerant.gate(0, FAILED) is None  # 1 of 4 failed: under 30%, and 3 of 4 live meets 75%
    over = _record([{"a": "live", "b": "failed"}, {"c": "live", "d": "failed"}], abort=0.3)
    assert over.gate(1, FAILED)[0] == "rolled_back" and "2 of 4 boards failed (50%)" in over.gate(1, FAILED)[1]
    last_wave = _record([{"a": "live"}, {"b": "live", "c": "failed"}])
    assert last_wave.gate(1, FAILED) is None  # without an abort rate the last wave's failures are reported


def test_a_wave_short_of_its_success_rate_at_the_timeout_halts_without_rolling_back():
    slow = _record([{"a": "live", "b": "pending", "c": "live", "d": "live"}, {}], success=0.9)
    state, why = slow.gate(0, FAILED)
    assert state == "halted" and "3 of 4 live, 1 still pending at the timeout; the next wave needs 90%" in why
    assert _record([{"a": "live", "b": "pending", "c": "live", "d": "live"}, {}], success=0.75).gate(0, FAILED) is None


def test_the_record_counts_each_wave_and_reads_as_one_line():
    record = _record([{"a": "live"}, {"b": "live", "c": "refused"}])
    record.waves.append(Wave(["d", "e"]))
    record.state, record.reason = "rolled_back", "why"
    data = record.to_dict()
    assert [(w["live"], w["failed"], w["pending"]) for w in data["waves"]] == [(1, 0, 0), (1, 1, 0), (0, 0, 2)]
    assert describe(data) == ("rollout r1 of digits 0123456789ab to group:lab: rolled_back: why; waves 1: 1/1 live; "
                              "2: 1/2 live, 1 failed; 3: 0/2 live (not started)")
    assert describe({"waves": "junk", "where": 3}).startswith("rollout None of None None to None: None")


@pytest.mark.parametrize("tags, ok", [('{site = "shop-3", hw = "rpi4"}', True), ('{site = "a b"}', False),
                                      ('{site = 3}', False), ('["site"]', False)])
def test_board_tags_are_names_and_values(tmp_path, tags, ok):
    (tmp_path / "runtime.toml").write_text(
        f'[[models]]\nname = "m"\npath = "m"\n[telemetry]\nbroker = "localhost"\n'
        f'[fleet]\nallow_unsigned = true\ntags = {tags}\n')
    if ok:
        assert ServeConfig.from_toml(tmp_path / "runtime.toml").fleet.tags == {"site": "shop-3", "hw": "rpi4"}
    else:
        with pytest.raises(ValidationError, match="tags"):
            ServeConfig.from_toml(tmp_path / "runtime.toml")


def test_a_board_may_not_be_named_like_a_fleet_topic_level(tmp_path):
    (tmp_path / "runtime.toml").write_text('[telemetry]\nbroker = "localhost"\ndevice = "rollouts"\n')
    with pytest.raises(ValidationError, match="topic level edgec uses"):
        ServeConfig.from_toml(tmp_path / "runtime.toml")


def test_tags_from_the_broker_that_no_board_could_declare_are_dropped_and_bounded():
    hostile = {"tags": {"hw": "rpi4\x1b[2J", "site\n": "x", "ok": "yes", **{f"t{i}": "v" for i in range(100)}}}
    tags = tags_of(hostile)
    assert "hw" not in tags and "site\n" not in tags and tags["ok"] == "yes" and len(tags) == 32
    assert not matches(hostile, {"hw": "rpi4"})
