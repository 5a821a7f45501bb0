"""The demo's gold rubric: how Juniper & Co.'s house style scores a reply, ``house_style_score(prompt, response)``.

The simulated labelers rank by it (with noise), and the pipeline reports every gold figure against it when
``configs/pipeline.yaml`` names it (``rubric: pipeline.demo.rubric:house_style_score``). Six weighted checks, each
in [0, 1]; the README's "The demo" lists them.
"""

from __future__ import annotations

import math
import re

from pipeline.demo.house import CORPORATE_PHRASES, HOUSE_SIGN_OFF, MAX_WORDS, MIN_WORDS
from pipeline.demo.scenarios import SCENARIOS, Scenario

RUBRIC_WEIGHTS = {
    "greeting": 0.20,
    "apology": 0.15,
    "next_step": 0.20,
    "length": 0.15,
    "sign_off": 0.15,
    "no_corporate": 0.15,
}
# Credit for what a reply leaves out (apologies, corporate phrases, length) only counts once the reply does at least
# one thing a reply to this e-mail must do; otherwise empty or garbage output would collect it for free.
GATED_CHECKS = ("apology", "length", "no_corporate")

_APOLOGY = re.compile(r"\b(sorry|apologi[sz]e[sd]?|apologies|apology)\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.replace("\r\n", "\n").split("\n") if line.strip()]


def customer_first_name(prompt: str) -> str | None:
    """The first word after ``From:`` in the e-mail, or None when there is no From line."""
    match = re.search(r"^\s*From:\s*([A-Za-z][A-Za-z'-]*)", prompt, re.MULTILINE)
    return match.group(1) if match else None


def detect_scenario(prompt: str) -> Scenario | None:
    """The scenario of a customer e-mail, from its subject line (or, failing that, its whole text)."""
    subject = re.search(r"^\s*Subject:(.*)$", prompt, re.MULTILINE)
    for text in ([subject.group(1)] if subject else []) + [prompt]:
        for scenario in SCENARIOS:
            if re.search(scenario.cue, text, re.IGNORECASE):
                return scenario
    return None


def count_apologies(response: str) -> int:
    return sum(bool(_APOLOGY.search(s)) for s in _SENTENCE_END.split(response))


def check_greeting(response: str, first_name: str | None) -> float:
    """1 if the first line is exactly ``Hi <first name>,``; any single name if the e-mail gave none."""
    lines = _lines(response)
    if not lines:
        return 0.0
    if first_name is None:
        return float(re.fullmatch(r"Hi [A-Za-z][A-Za-z'-]*,", lines[0]) is not None)
    return float(lines[0] == f"Hi {first_name},")


def check_apology(response: str, scenario: Scenario | None) -> float:
    """1 for exactly one apology when the customer reports a problem, none otherwise; at most one if unknown."""
    n = count_apologies(response)
    if scenario is None:
        return float(n <= 1)
    return float(n == 1) if scenario.problem else float(n == 0)


def check_next_step(response: str, scenario: Scenario | None) -> float:
    """1 if the reply names the scenario's concrete next step (any scenario's, if it is unknown)."""
    patterns = [scenario.next_step] if scenario else [s.next_step for s in SCENARIOS]
    return float(any(re.search(p, response, re.IGNORECASE) for p in patterns))


def check_length(response: str) -> float:
    """1 within 35-80 words; falls linearly to 0 at 0 words below, and at 160 words above."""
    n = len(response.split())
    if n < MIN_WORDS:
        return n / MIN_WORDS
    return max(0.0, 1.0 - (n - MAX_WORDS) / MAX_WORDS) if n > MAX_WORDS else 1.0


def check_sign_off(response: str) -> float:
    """1 if the reply ends with the house sign-off and uses it only once."""
    text = "\n".join(_lines(response))
    return float(text.endswith(HOUSE_SIGN_OFF) and text.count(HOUSE_SIGN_OFF) == 1)


def check_no_corporate(response: str) -> float:
    """1 without corporate phrases; each distinct one found costs half."""
    text = " ".join(response.lower().split())
    found = sum(phrase in text for phrase in CORPORATE_PHRASES)
    return max(0.0, 1.0 - 0.5 * found)


def rubric_breakdown(prompt: str, response: str) -> dict[str, float]:
    """Each check's score in [0, 1], gated already; ``house_style_score`` is their sum weighted by RUBRIC_WEIGHTS."""
    scenario = detect_scenario(prompt)
    scores = {
        "greeting": check_greeting(response, customer_first_name(prompt)),
        "apology": check_apology(response, scenario),
        "next_step": check_next_step(response, scenario),
        "length": check_length(response),
        "sign_off": check_sign_off(response),
        "no_corporate": check_no_corporate(response),
    }
    if not max(scores["greeting"], scores["next_step"], scores["sign_off"]):
        scores |= dict.fromkeys(GATED_CHECKS, 0.0)
    return scores


def house_style_score(prompt: str, response: str) -> float:
    """The gold rubric: the weighted sum of ``rubric_breakdown``, in [0, 1] (1 = the house style in full)."""
    breakdown = rubric_breakdown(prompt, response)
    return min(1.0, math.fsum(RUBRIC_WEIGHTS[name] * score for name, score in breakdown.items()))
