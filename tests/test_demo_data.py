"""The demo data set: determinism, splits that do not leak, the style mix, the cache, and the gold rubric by hand."""

from __future__ import annotations

import pytest

from pipeline.demo import data as dd
from pipeline.demo import rubric, words
from pipeline.demo.scenarios import SCENARIO_BY_NAME

PROMPT = (
    "Draft a reply to this customer e-mail.\n\n"
    "From: Maya Lopez\n"
    "Subject: Broken sage mug\n\n"
    "Hi,\n\nMy order #48213 arrived today but the sage mug was cracked right down the side.\n\nThanks,\nMaya"
)
APOLOGY = "I'm so sorry your sage mug arrived broken."
# 51 words: greeting 2 + apology 8 + next step 26 + closing 9 + sign-off 6.
PERFECT = (
    "Hi Maya,\n\n"
    f"{APOLOGY} A replacement mug is on its way to you by tracked post on Monday, and there's no need to send the "
    "broken one back to us. I hope the new one arrives in one piece.\n\n"
    "Warmly,\nThe Juniper & Co. team"
)
CARE_PROMPT = (
    "Please draft a reply to the e-mail below.\n\n"
    "From: Jordan Kim\n"
    "Subject: Is the celadon teapot dishwasher safe?\n\n"
    "Can it go in the dishwasher, or should I wash it by hand?"
)
# 46 words, and no apology: the customer only asked a question.
CARE_PERFECT = (
    "Hi Jordan,\n\n"
    "Your celadon teapot is dishwasher and microwave safe, but we recommend you hand-wash it with a soft sponge to "
    "keep the glaze bright. Please avoid moving it straight from the fridge into a hot oven. Enjoy your teapot!\n\n"
    "Warmly,\nThe Juniper & Co. team"
)

# For each style: the checks it must fail, and those it may also fail (formal replies are sometimes corporate too;
# terse replies to a problem skip the apology).
STYLE_FAILS = {
    "house": (set(), set()),
    "formal": ({"greeting", "sign_off"}, {"no_corporate"}),
    "terse": ({"greeting", "length", "sign_off"}, {"apology"}),
    "rambling": ({"length"}, set()),
    "over_apologetic": ({"apology"}, set()),
    "corporate": ({"no_corporate"}, set()),
    "no_greeting": ({"greeting"}, set()),
    "full_name": ({"greeting"}, set()),
    "missing_signoff": ({"sign_off"}, set()),
}


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return dd.generate(seed=0)


def _text(row: dict, key: str) -> str:
    return row[key][0]["content"]


def _sft_rows(splits: dict[str, list[dict]]) -> list[dict]:
    return splits["sft_train"] + splits["sft_eval"]


# ---------------------------------------------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    first = dd.write_demo_data(tmp_path / "a", seed=0)
    again = dd.write_demo_data(tmp_path / "b", seed=0)
    other = dd.write_demo_data(tmp_path / "c", seed=1)
    assert set(first) == set(dd.SPLIT_SIZES)
    for split in dd.SPLIT_SIZES:
        assert first[split].read_bytes() == again[split].read_bytes()
        assert first[split].read_bytes() != other[split].read_bytes()


def test_split_sizes_and_row_shapes(splits):
    assert {split: len(rows) for split, rows in splits.items()} == dd.SPLIT_SIZES
    for split, rows in splits.items():
        assert len({row["id"] for row in rows}) == len(rows)
        for row in rows:
            assert row["prompt"][0]["role"] == "user" and len(row["prompt"]) == 1
            assert row["scenario"] in SCENARIO_BY_NAME
            if split in dd.SFT_SPLITS:
                assert set(row) == {"id", "prompt", "completion", "style", "scenario"}
                assert row["completion"][0]["role"] == "assistant" and row["style"] in dd.STYLE_MIX
            else:
                assert set(row) == {"id", "prompt", "scenario"}


def test_no_prompt_appears_twice_within_or_across_splits(splits):
    prompts = [_text(row, "prompt") for rows in splits.values() for row in rows]
    assert len(prompts) == sum(dd.SPLIT_SIZES.values())
    assert len(set(prompts)) == len(prompts)


def test_prompts_have_the_parseable_layout_and_every_scenario_is_recognised(splits):
    for rows in splits.values():
        assert {row["scenario"] for row in rows} == set(SCENARIO_BY_NAME)
        for row in rows:
            prompt = _text(row, "prompt")
            instruction, header, _body = prompt.split("\n\n", 2)
            assert instruction in words.INSTRUCTIONS
            assert header.startswith("From: ") and "\nSubject: " in header
            assert rubric.customer_first_name(prompt) in words.FIRST_NAMES
            assert rubric.detect_scenario(prompt).name == row["scenario"]
            assert prompt.isascii()


def test_house_style_share_is_a_minority_of_the_sft_data(splits):
    for split in dd.SFT_SPLITS:
        assert 0.25 <= dd.style_share(splits[split]) <= 0.35
    assert {row["style"] for row in splits["sft_train"]} == set(dd.STYLE_MIX)


def test_every_reply_addresses_its_scenario_whatever_its_style(splits):
    for row in _sft_rows(splits):
        assert rubric.rubric_breakdown(_text(row, "prompt"), _text(row, "completion"))["next_step"] == 1.0, row["id"]


def test_each_style_breaks_exactly_its_own_rules(splits):
    for row in _sft_rows(splits):
        breakdown = rubric.rubric_breakdown(_text(row, "prompt"), _text(row, "completion"))
        failed = {name for name, score in breakdown.items() if score < 1.0}
        must, may = STYLE_FAILS[row["style"]]
        assert must <= failed <= must | may, (row["id"], row["style"], failed)


def test_house_replies_score_higher_on_average_than_every_other_style(splits):
    by_style: dict[str, list[float]] = {}
    for row in _sft_rows(splits):
        by_style.setdefault(row["style"], []).append(
            rubric.house_style_score(_text(row, "prompt"), _text(row, "completion"))
        )
    means = {style: sum(scores) / len(scores) for style, scores in by_style.items()}
    assert means["house"] == pytest.approx(1.0)
    assert all(mean < means["house"] - 0.05 for style, mean in means.items() if style != "house"), means


def test_name_lists(splits):
    assert len(set(words.FIRST_NAMES)) == len(words.FIRST_NAMES) >= 300
    assert len(set(words.LAST_NAMES)) == len(words.LAST_NAMES) >= 100
    # A maker sharing a customer's name would make "Hi <name>," ambiguous to copy.
    assert not set(words.MAKERS) & set(words.FIRST_NAMES)


def test_corpus_texts_hold_every_prompt_and_reply(splits):
    texts = dd.corpus_texts(seed=0)
    assert len(texts) == sum(dd.SPLIT_SIZES.values()) + len(_sft_rows(splits))
    assert _text(splits["eval_prompts"][-1], "prompt") in texts
    assert _text(splits["sft_train"][0], "completion") in texts


def test_command_line_writes_files_and_reports_the_house_share(tmp_path, capsys):
    dd.main(["--out", str(tmp_path), "--seed", "3"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{split}.jsonl" for split in dd.SPLIT_SIZES)
    out = capsys.readouterr().out
    assert "1800 rows" in out and "house style 30%" in out


# ---------------------------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------------------------


def test_ensure_demo_data_builds_once_then_reuses_the_cache(tmp_path, monkeypatch):
    path = dd.ensure_demo_data(tmp_path)
    assert path == tmp_path / "_data" / "demo"  # the path the stage configs name
    mtimes = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert set(mtimes) == {f"{split}.jsonl" for split in dd.SPLIT_SIZES} | {dd.VERSION_FILE}

    def must_not_write(*args, **kwargs):
        raise AssertionError("the cached data was rewritten")

    monkeypatch.setattr(dd, "write_demo_data", must_not_write)
    assert dd.ensure_demo_data(tmp_path) == path
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == mtimes
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary directory left behind


def test_data_of_an_older_demo_version_is_rebuilt(tmp_path):
    path = dd.ensure_demo_data(tmp_path)
    (path / dd.VERSION_FILE).write_text("demo-v0\n")
    (path / "prompts.jsonl").write_text("{}\n")
    assert dd.ensure_demo_data(tmp_path) == path
    assert (path / dd.VERSION_FILE).read_text().strip() == dd.DEMO_VERSION
    assert len((path / "prompts.jsonl").read_text().splitlines()) == dd.SPLIT_SIZES["prompts"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # the old copy is gone too


def test_a_crash_while_building_leaves_no_cache(tmp_path, monkeypatch):
    def crash_halfway(out_dir, seed=0):
        (out_dir / "sft_train.jsonl").write_text("{}\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(dd, "write_demo_data", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        dd.ensure_demo_data(tmp_path)
    assert list((tmp_path / "_data").iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# The rubric, by hand
# ---------------------------------------------------------------------------------------------------------------


def test_rubric_weights_sum_to_one():
    assert sum(rubric.RUBRIC_WEIGHTS.values()) == pytest.approx(1.0)


def test_perfect_house_replies_score_one():
    assert rubric.rubric_breakdown(PROMPT, PERFECT) == dict.fromkeys(rubric.RUBRIC_WEIGHTS, 1.0)
    assert rubric.house_style_score(PROMPT, PERFECT) == pytest.approx(1.0)
    assert rubric.house_style_score(CARE_PROMPT, CARE_PERFECT) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # greeting (0.20): full name, or the formal greeting
        (PERFECT.replace("Hi Maya,", "Hi Maya Lopez,"), 0.80),
        (PERFECT.replace("Hi Maya,", "Dear Ms. Lopez,"), 0.80),
        # apology (0.15): a problem needs exactly one; none (43 words, still long enough) or two both miss it
        (PERFECT.replace(APOLOGY + " ", ""), 0.85),
        (PERFECT.replace(APOLOGY, APOLOGY + " Sorry again for the trouble."), 0.85),
        # next step (0.20): "a new mug" promises no replacement in words the rubric can check
        (PERFECT.replace("A replacement mug", "A new mug"), 0.80),
        # sign-off (0.15): another sign-off, or the house one twice
        (PERFECT.replace("Warmly,\nThe Juniper & Co. team", "Kind regards,\nCustomer Support"), 0.85),
        (PERFECT + "\n\nWarmly,\nThe Juniper & Co. team", 0.85),
        # corporate phrases (0.15): each distinct phrase costs half the check, 0.075
        (PERFECT.replace("Monday,", "Monday, as per our policy,"), 0.925),
        (
            PERFECT.replace("Monday,", "Monday, as per our policy,").replace(
                "in one piece", "at your earliest convenience"
            ),
            0.85,
        ),
        # length (0.15): 100 words -> 1 - (100 - 80) / 80 = 0.75, loses 0.15 * 0.25 = 0.0375
        (PERFECT.replace("\n\nWarmly", " " + " ".join(["clay"] * 49) + "\n\nWarmly"), 0.9625),
        # 15 words -> 15 / 35 = 3/7, loses 0.15 * 4/7
        ("Hi Maya,\n\nI'm so sorry. A replacement ships Monday.\n\nWarmly,\nThe Juniper & Co. team", 1 - 0.15 * 4 / 7),
    ],
)
def test_each_violation_costs_its_weight(response, expected):
    assert rubric.house_style_score(PROMPT, response) == pytest.approx(expected)


def test_an_apology_where_none_is_due_costs_the_apology_weight():
    reply = CARE_PERFECT.replace("Hi Jordan,\n\n", "Hi Jordan,\n\nI'm sorry for the slow reply. ")
    assert rubric.house_style_score(CARE_PROMPT, reply) == pytest.approx(0.85)


@pytest.mark.parametrize(
    "garbage",
    ["", "   \n\n ", "asdf qwer zxcv", "lorem ipsum " * 30, "<|end|><|end|>", "!!!???...", "\x00\x01 \ufffd"],
)
def test_empty_and_garbage_output_scores_zero(garbage):
    assert rubric.house_style_score(PROMPT, garbage) == 0.0
    assert rubric.house_style_score(CARE_PROMPT, garbage) == 0.0


def test_credit_for_what_a_reply_leaves_out_needs_one_thing_it_does():
    # 50 on-topic-free words earn nothing; with the greeting they also earn apology, length and corporate credit:
    # 0.20 + 0.15 + 0.15 + 0.15.
    filler = " ".join(["clay"] * 48)
    assert rubric.house_style_score(CARE_PROMPT, filler + " pots here") == 0.0
    assert rubric.house_style_score(CARE_PROMPT, f"Hi Jordan,\n\n{filler}") == pytest.approx(0.65)


def test_rubric_copes_with_prompts_it_cannot_parse():
    # Without a From line any single-name greeting counts, and without a scenario any next step does.
    assert rubric.house_style_score("", PERFECT) == pytest.approx(1.0)
    assert rubric.house_style_score("no header at all", "") == 0.0
    assert rubric.customer_first_name("garbage") is None and rubric.detect_scenario("garbage") is None
