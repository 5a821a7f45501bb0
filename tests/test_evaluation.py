"""The policy evaluation (evaluation.evaluate): win rates, the sequence log-probabilities its KL estimate sums, its
report; and best-of-n's KL, picks, summary and verdict (evaluation.best_of_n) against values worked out by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


def test_win_rate_counts_ties_half():
    from evaluation.evaluate import win_rate

    # a beats b on prompt 1, ties on 2, loses on 3: (1 + 0.5 + 0) / 3 = 0.5
    assert win_rate([2.0, 1.0, 0.0], [1.0, 1.0, 3.0]) == pytest.approx(0.5)


def test_sequence_logprobs_match_a_token_by_token_computation(micro_model):
    from transformers import AutoModelForCausalLM

    from evaluation.evaluate import sequence_logprobs

    model = AutoModelForCausalLM.from_pretrained(micro_model).eval()
    pad = 0
    # One left-padded prompt of 3 tokens (context 4), then a response of 2 tokens and a pad.
    seq = torch.tensor([[pad, 11, 12, 13, 21, 22, pad]])
    got = sequence_logprobs(model, seq, context_length=4, pad_id=pad)
    with torch.no_grad():
        logits = model(torch.tensor([[11, 12, 13, 21, 22]])).logits[0].log_softmax(-1)
    # p(21 | 11 12 13) * p(22 | 11 12 13 21): positions 2 and 3 of the unpadded sequence
    expected = logits[2, 21] + logits[3, 22]
    assert got.item() == pytest.approx(expected.item(), abs=1e-4)


@pytest.mark.parametrize("rubric", ["team_rubric:score", None])
def test_the_report_names_the_gold_rubric(tmp_path, rubric):
    from evaluation.evaluate import write_report

    summary = {"reward_mean": 0.5, "kl_to_reference": 0.1}
    rows = [{"prompt_id": "p1", "response": "Hello.", "score": 0.5}]
    metrics = {"num_prompts": 1, "gold_rubric": rubric, "win_rate_ppo_vs_sft": 0.5, "kl_within_bound": True}
    metrics |= {"ppo": summary}
    config = SimpleNamespace(run="t", temperature=1.0, max_kl=20.0)
    report = write_report(
        tmp_path, {"summary": summary, "rows": rows}, {"summary": summary, "rows": rows}, metrics, config
    )
    first = report.read_text().splitlines()[2]
    if rubric:
        assert first.endswith("Gold scores by the rubric `team_rubric:score`.")
    else:
        assert first.endswith("No gold rubric: the scores are the reward model's alone.")


# --- best-of-n ----------------------------------------------------------------------------------------------------


def test_best_of_n_kl_pick_and_summary_hand_worked():
    from evaluation.best_of_n import best_of_n_kl, pick_best, summarise, verdict

    # log n - (n - 1) / n: 0, log 2 - 1/2 = 0.1931, log 4 - 3/4 = 0.6363, log 16 - 15/16 = 1.8351
    assert [round(best_of_n_kl(n), 4) for n in (1, 2, 4, 16)] == [0.0, 0.1931, 0.6363, 1.8351]
    with pytest.raises(ValueError):
        best_of_n_kl(0)
    scores = [[0.1, 0.9, 0.5, 0.9], [0.7, 0.2, 0.8, 0.0]]
    assert pick_best(scores, 1) == [0, 0] and pick_best(scores, 2) == [1, 0] and pick_best(scores, 4) == [1, 2]
    samples = [
        [{"score": s, "gold": g, "length": 10} for s, g in zip(row, golds, strict=True)]
        for row, golds in zip(scores, [[0.0, 1.0, 0.5, 0.2], [0.6, 0.1, 0.4, 0.3]], strict=True)
    ]
    sft = [{"score": 0.5, "gold": 0.5}, {"score": 0.7, "gold": 0.6}]
    by_n = {row["n"]: row for row in summarise([1, 2, 4], samples, sft)}
    # n = 4 picks (0.9, gold 1.0) and (0.8, gold 0.4): reward 0.85, gold 0.7; against SFT's (0.5, 0.5), (0.7, 0.6):
    # one win and one win by reward, one win and one loss by gold.
    assert by_n[4]["reward_mean"] == pytest.approx(0.85) and by_n[4]["gold_score"] == pytest.approx(0.7)
    assert by_n[4]["win_rate_vs_sft"] == 1.0 and by_n[4]["gold_win_rate_vs_sft"] == 0.5
    # n = 1 picks the first samples: (0.1, 0.0) and (0.7, 0.6): a loss, and a tie (half) by reward.
    assert by_n[1]["win_rate_vs_sft"] == 0.25 and by_n[1]["kl"] == 0.0
    ppo = {"gold_score": 0.9, "kl_to_reference": 0.3}  # within KL 0.3: n = 1 and 2 (gold 0.8) only
    rows = list(by_n.values())
    assert verdict(rows, {"PPO": ppo}, "gold_score") == (
        "PPO won on this run: gold score 0.900 at KL 0.30 (then best-of-2 0.800 at KL 0.19; best-of-1 0.300 at KL 0.00)."
    )
    assert verdict(rows, {"PPO": {**ppo, "gold_score": 0.1}}, "gold_score").startswith("best-of-2 won")
    # A DPO policy at KL 1.0 widens the budget to n = 4 (KL 0.64, gold 0.7), which now enters the ranking.
    both = {"PPO": {**ppo, "gold_score": 0.6}, "DPO": {"gold_score": 0.85, "kl_to_reference": 1.0}}
    assert verdict(rows, both, "gold_score") == (
        "DPO won on this run: gold score 0.850 at KL 1.00 (then best-of-2 0.800 at KL 0.19; best-of-4 0.700 at KL 0.64; "
        "PPO 0.600 at KL 0.30)."
    )
