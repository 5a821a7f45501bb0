"""Juniper & Co.'s house style: the rules its team wants every reply drafted in.

1. the first line is ``Hi <first name>,`` (the first name from the e-mail's ``From:`` line, nothing else);
2. exactly one short apology sentence when the customer reports a problem (damaged, late or wrong item, a discount
   code that failed), and none at all for questions, requests or praise;
3. the concrete next step for the case (replacement, tracking link, return label, refund, care instructions, ...):
   each scenario of ``scenarios.yaml`` names its own;
4. short: 35 to 80 words in all;
5. it ends with exactly the house sign-off, ``Warmly,`` / ``The Juniper & Co. team``;
6. none of the corporate phrases the team dislikes (``valued customer``, ``we regret to inform you``, ...).

The data set's reply writers (``styles``) follow or break these rules; the gold rubric (``rubric``) checks them.
"""

from __future__ import annotations

SHOP = "Juniper & Co."
HOUSE_SIGN_OFF = "Warmly,\nThe Juniper & Co. team"
MIN_WORDS, MAX_WORDS = 35, 80

# Lower-case; matched case-insensitively on whitespace-normalised text.
CORPORATE_PHRASES = (
    "we regret to inform you",
    "valued customer",
    "dear sir or madam",
    "any inconvenience this may have caused",
    "please do not hesitate to contact us",
    "we value your business",
    "your satisfaction is our top priority",
    "as per our policy",
    "kindly be advised",
    "at your earliest convenience",
    "thank you for your patience and understanding",
)
