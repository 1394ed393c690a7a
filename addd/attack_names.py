"""Names of the attack suite, and what kind of attack each one is; no torch import.

Config validation, search spaces and CLIs check names against these without loading the attack
libraries. ``addd.attacks`` implements exactly the suite's names (it asserts so on import).

A defense trains on the examples of its *known* attacks (``KNOWN_ATTACK_NAMES``): any suite
attack, whose examples are computed once against M_t and cached, or an *online* attack
(``ONLINE_ATTACK_NAMES``), generated per batch against the current defense during training. An
online attack depends on the defense's weights, so it has no cached set and is not in the suite
(``is_online(name)`` tells them apart).
"""

from __future__ import annotations

# paper Table 3 / App. C.1: the oblivious suite, attacks on the target model alone
ATTACK_NAMES: tuple[str, ...] = (
    "PGDu", "PGDt", "CWu", "CWt", "DDNu", "DDNt", "LSu", "BAu", "STu", "STt", "AA_Linf", "AA_L2",
)
# paper Sec 4.3: attacks on the whole pipeline M_t ∘ G ∘ E
ADAPTIVE_ATTACK_NAMES: tuple[str, ...] = ("BPDA", "AA_Linf", "AA_L2")
# Online (adaptive-aware) known attacks, generated per training batch, never cached:
# "PGDa": untargeted L∞ PGD through the whole pipeline M_t ∘ G ∘ E of the current defense (for
# adversarial training, through its own classifier), ε the dataset's PGD ε. Named like the suite
# (family + suffix); "a" for adaptive, i.e. against the defense, not M_t alone.
ONLINE_ATTACK_NAMES: tuple[str, ...] = ("PGDa",)
# Every name a defense may list in its known_attacks.
KNOWN_ATTACK_NAMES: tuple[str, ...] = (*ATTACK_NAMES, *ONLINE_ATTACK_NAMES)
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
assert set(ATTACK_KINDS) == set(ATTACK_NAMES) and not set(ATTACK_NAMES) & set(ONLINE_ATTACK_NAMES)


def is_online(name: str) -> bool:
    """True for a known attack generated online against the current defense (never cached)."""
    return name in ONLINE_ATTACK_NAMES
