"""The policy evaluation (ppo.evaluate): win rates, the sequence log-probabilities its KL estimate sums, its report."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


def test_win_rate_counts_ties_half():
    from ppo.evaluate import win_rate

    # a beats b on prompt 1, ties on 2, loses on 3: (1 + 0.5 + 0) / 3 = 0.5
    assert win_rate([2.0, 1.0, 0.0], [1.0, 1.0, 3.0]) == pytest.approx(0.5)


def test_sequence_logprobs_match_a_token_by_token_computation(micro_model):
    from transformers import AutoModelForCausalLM

    from ppo.evaluate import sequence_logprobs

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
    from ppo.evaluate import write_report

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
