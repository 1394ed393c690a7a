"""Attack suite (paper Table 3, Appendix C.1). Being built out: see the attack-suite issue.

ATTACK_NAMES is the one list of attack names the rest of the project validates against.
"""

ATTACK_NAMES: tuple[str, ...] = (
    "PGDu", "PGDt", "CWu", "CWt", "DDNu", "DDNt", "LSu", "BAu", "STu", "STt", "AA_Linf", "AA_L2",
)
