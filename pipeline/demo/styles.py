"""The reply writers: the house style and eight others, each breaking some of the house rules (``house``).

Each writer turns the sentences of one reply (``ReplyParts``, filled in for one customer e-mail) into a reply in its
style; ``STYLE_WRITERS`` names them. ``data`` mixes them into the SFT splits in the shares of its ``STYLE_MIX``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pipeline.demo.house import HOUSE_SIGN_OFF, SHOP

FORMAL_APOLOGY = "Please accept our apologies for this."
FORMAL_CLOSERS = (
    "Should you have any further questions, please reply to this e-mail.",
    "Please do not hesitate to contact us if you need anything further.",
    "We trust this resolves the matter.",
)
FORMAL_SIGN_OFFS = (
    "Kind regards,\nCustomer Support",
    "Yours sincerely,\nCustomer Service Team",
    "Best regards,\nJuniper & Co. Support",
)
CORPORATE_OPENERS = (
    "Thank you for contacting us, we value your business.",
    "As a valued customer, your satisfaction is our top priority.",
    "Thank you for your e-mail, which has been handled as per our policy.",
)
CORPORATE_APOLOGY = "We apologise for any inconvenience this may have caused."
CORPORATE_CLOSERS = (
    "Please do not hesitate to contact us should you require further assistance.",
    "Kindly be advised that replies may take up to two business days.",
    "Thank you for your patience and understanding.",
)
EXTRA_APOLOGIES = (
    "We're really sorry for all the trouble.",
    "I can't apologise enough.",
    "Sorry again for the hassle.",
    "Please accept my sincere apologies.",
    "I'm so sorry for the slow reply.",
    "Apologies if our website wasn't clear.",
)
NEAR_MISS_SIGN_OFFS = (
    "",
    "Best,\nJuniper",
    "Cheers!",
    "Warm regards,\nThe Juniper & Co. team",
    "Warmly,\nJuniper & Co.",
    "Thanks,\nCustomer Support",
)
# Chatter for the rambling style: nothing in it apologises, promises a next step or sounds corporate.
FILLERS = (
    "Things have been busy here at the studio since the spring fair, and the kiln has hardly had a day off.",
    "Our little team is only four people, so every order still gets packed by hand at the big table by the window.",
    "We have been trying out a new speckled glaze this month and, honestly, we keep changing our minds about it.",
    "The weather has been grey all week, which is strangely good for drying pots slowly and evenly.",
    "Maren says hello, by the way; she is the one who answers most of these e-mails in a normal week.",
    "I could talk about clay all day, as you can probably tell, so I will try to keep this reasonably short.",
    "If you are ever nearby, our open studio day is on the first Saturday of the month and there is usually cake.",
    "We also post photos of every kiln opening, which is always a slightly nerve-racking moment for everyone.",
    "Each piece takes about three weeks from the wheel to the shelf, counting drying, two firings and glazing.",
)


@dataclass(frozen=True)
class ReplyParts:
    """The sentences one reply is built from, already filled in for one customer e-mail."""

    first: str
    last: str
    title: str | None
    reference: str  # "order #12345" or "your <item>", for the formal opening line
    apology: str | None
    step: str
    terse: str
    extra: str


def _join(*paragraphs: str) -> str:
    return "\n\n".join(p for p in paragraphs if p)


def _sentences(*sentences: str | None) -> str:
    return " ".join(s for s in sentences if s)


def _house(parts: ReplyParts, rng: random.Random) -> str:
    return _join(f"Hi {parts.first},", _sentences(parts.apology, parts.step, parts.extra), HOUSE_SIGN_OFF)


def _formal(parts: ReplyParts, rng: random.Random) -> str:
    greeting = f"Dear {parts.title} {parts.last}," if parts.title else f"Dear {parts.first} {parts.last},"
    opening = f"Thank you for contacting {SHOP} regarding {parts.reference}."
    apology = FORMAL_APOLOGY if parts.apology else None
    body = _sentences(opening, apology, parts.step, rng.choice(FORMAL_CLOSERS))
    return _join(greeting, body, rng.choice(FORMAL_SIGN_OFFS))


def _terse(parts: ReplyParts, rng: random.Random) -> str:
    return parts.terse


def _rambling(parts: ReplyParts, rng: random.Random) -> str:
    target, words, chatter = rng.randint(110, 150), len(_house(parts, rng).split()), []
    for filler in rng.sample(FILLERS, len(FILLERS)):
        if words >= target:
            break
        chatter.append(filler)
        words += len(filler.split())
    body = _join(_sentences(parts.apology, parts.step), " ".join(chatter), parts.extra)
    return _join(f"Hi {parts.first},", body, HOUSE_SIGN_OFF)


def _over_apologetic(parts: ReplyParts, rng: random.Random) -> str:
    apologies = ([parts.apology] if parts.apology else []) + rng.sample(EXTRA_APOLOGIES, 2)
    return _join(f"Hi {parts.first},", _sentences(*apologies[:-1], parts.step, apologies[-1]), HOUSE_SIGN_OFF)


def _corporate(parts: ReplyParts, rng: random.Random) -> str:
    apology = CORPORATE_APOLOGY if parts.apology else None
    body = _sentences(rng.choice(CORPORATE_OPENERS), apology, parts.step, rng.choice(CORPORATE_CLOSERS))
    return _join(f"Hi {parts.first},", body, HOUSE_SIGN_OFF)


def _no_greeting(parts: ReplyParts, rng: random.Random) -> str:
    return _join(_sentences(parts.apology, parts.step, parts.extra), HOUSE_SIGN_OFF)


def _full_name(parts: ReplyParts, rng: random.Random) -> str:
    return _join(f"Hi {parts.first} {parts.last},", _sentences(parts.apology, parts.step, parts.extra), HOUSE_SIGN_OFF)


def _missing_signoff(parts: ReplyParts, rng: random.Random) -> str:
    return _join(
        f"Hi {parts.first},", _sentences(parts.apology, parts.step, parts.extra), rng.choice(NEAR_MISS_SIGN_OFFS)
    )


STYLE_WRITERS = {
    "house": _house,
    "formal": _formal,
    "terse": _terse,
    "rambling": _rambling,
    "over_apologetic": _over_apologetic,
    "corporate": _corporate,
    "no_greeting": _no_greeting,
    "full_name": _full_name,
    "missing_signoff": _missing_signoff,
}
