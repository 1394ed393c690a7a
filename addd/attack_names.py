"""Names of the attack suite, and what kind of attack each one is; no torch import.

Config validation, search spaces and CLIs check names against these without loading the attack
libraries. ``addd.attacks`` implements exactly these names (it asserts so on import).
"""

from __future__ import annotations

# paper Table 3 / App. C.1: the oblivious suite, attacks on the target model alone
ATTACK_NAMES: tuple[str, ...] = (
    "PGDu", "PGDt", "CWu", "CWt", "DDNu", "DDNt", "LSu", "BAu", "STu", "STt", "AA_Linf", "AA_L2",
)
# paper Sec 4.3: attacks on the whole pipeline M_t ∘ G ∘ E
ADAPTIVE_ATTACK_NAMES: tuple[str, ...] = ("BPDA", "AA_Linf", "AA_L2")
# paper C.2: "the goal of the targeted attack is to have all examples classified into class 3"
DEFAULT_TARGET_CLASS = 3

# What each suite attack needs from the model: "gradient" (white-box gradients), "decision"
# (only the predicted label), "score" (only the output scores: local search is black-box),
# "spatial" (a flow field / rotation-translation instead of an additive Lp perturbation).
ATTACK_KINDS: dict[str, str] = {
    "PGDu": "gradient", "PGDt": "gradient", "CWu": "gradient", "CWt": "gradient",
    "DDNu": "gradient", "DDNt": "gradient", "AA_Linf": "gradient", "AA_L2": "gradient",
    "BAu": "decision",
    "LSu": "score",
    "STu": "spatial", "STt": "spatial",
}
assert set(ATTACK_KINDS) == set(ATTACK_NAMES)
