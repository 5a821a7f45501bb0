"""The policy evaluation (ppo.evaluate): win rates and the sequence log-probabilities its KL estimate sums."""

from __future__ import annotations

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
