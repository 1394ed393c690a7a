"""Robustness evaluation against a hand-computed case; worst cases, holdout, no grad history."""

from __future__ import annotations

import math
import pytest
import torch
from torch import nn

from addd.advcache import AdvCache, AdvRequest, AdvSet
from addd.evaluate import (
    EvaluationError,
    evaluate,
    per_sample_accuracy,
    reference_predictions,
    robust_masks,
)
from addd.inference import predict

# The constructed case. Images are (1, 1, 4) one-hot "logits", the target model reads them as
# they are (prediction = argmax), the defense swaps channels 1 and 2. An attack's set is given
# by the predictions we want *after* the defense, so its undefended predictions are swapped.
SWAP = [0, 2, 1, 3]
Y = torch.tensor([0, 1, 2, 3, 3, 0, 1, 2])
DEFENDED_PRED = {
    "PGDt": [0, 1, 2, 3, 0, 0, 3, 2],  # known, targeted to 3
    "PGDu": [0, 1, 2, 3, 3, 1, 1, 2],  # unknown
    "CWt": [3, 1, 2, 3, 3, 0, 1, 3],  # unknown, targeted to 3
    "DDNu": [0, 1, 2, 3, 1, 0, 2, 2],  # unknown, holdout
}


class SwapDefense(nn.Module):
    """restore swaps channels 1 and 2; records the mode and grad state it was called in."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bool, bool]] = []

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return x[..., SWAP]


def images(pred: list[int]) -> torch.Tensor:
    return nn.functional.one_hot(torch.tensor(pred), 4).float().view(-1, 1, 1, 4)


def constructed_sets() -> dict[str, AdvSet]:
    sets = {}
    for name, pred in DEFENDED_PRED.items():
        target = torch.full((8,), 3) if name.endswith("t") else None
        sets[name] = AdvSet(name, images([SWAP[p] for p in pred]), Y.clone(), target)
    return sets


def run_constructed(**kwargs):
    defense = SwapDefense().train()
    report = evaluate(
        defense, nn.Flatten(), images(Y.tolist()), Y, constructed_sets(), known_attacks=("PGDt",), batch_size=3,
        **kwargs,
    )
    return report, defense


def test_constructed_case_matches_hand_computation():
    report, _ = run_constructed(holdout=("DDNu",))
    metrics = report.to_metrics()
    # Hand computation (Acc_t = (num_correct - num_r) / (N - num_r), target 3):
    expected = {
        "acc.clean": 1.0,  # no defense, clean one-hot images
        "acc.reconstruction": 4 / 8,  # the swap breaks classes 1 and 2
        "acc.defended.PGDt": (6 - 1) / (8 - 1),  # correct [1,1,1,1,0,1,0,1], num_r = 1 (index 3)
        "acc.undefended.PGDt": (3 - 1) / (8 - 1),  # pred [0,2,1,3,0,0,3,1]
        "acc.defended.PGDu": 7 / 8,
        "acc.undefended.PGDu": 3 / 8,  # pred [0,2,1,3,3,2,2,1]
        "acc.defended.CWt": (6 - 2) / (8 - 2),  # correct [0,1,1,1,1,1,1,0], num_r = 2 (3, 4)
        "acc.undefended.CWt": (3 - 2) / (8 - 2),  # pred [3,2,1,3,3,0,2,3]
        "acc.defended.DDNu": 6 / 8,
        "acc.undefended.DDNu": 4 / 8,  # pred [0,2,1,3,2,0,1,1]
        "worst.unknown": 4 / 6,  # CWt; plain Acc_u would have made it DDNu's 6/8
        # correct under all three unknown: indices 1, 2, 3; index 3 is CWt's num_r -> robust 1, 2
        "worst.unknown_per_sample": 2 / 8,
        "worst.holdout": 6 / 8,
    }
    assert metrics.keys() == expected.keys()
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value), name
    assert report.unknown_attacks == ("PGDu", "CWt", "DDNu")


class SwapClassifier(nn.Module):
    """A defense's own classifier (as adversarial training brings one): reads channels 1 and 2 swapped."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x.flatten(1).argmax(1), 4).float()[:, SWAP]


class IdentityRestore(nn.Module):
    def restore(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_clean_and_undefended_stay_the_target_models_when_the_defense_brings_its_own_classifier():
    """Identity restore + a swapping classifier defends exactly like SwapDefense in front of M_t:
    the defended figures match, and with undefended_model=M_t so do clean and undefended."""
    reference, _ = run_constructed(holdout=("DDNu",))
    kwargs = dict(known_attacks=("PGDt",), holdout=("DDNu",), batch_size=3)
    own = evaluate(IdentityRestore(), SwapClassifier(), images(Y.tolist()), Y, constructed_sets(),
                   undefended_model=nn.Flatten(), **kwargs)
    assert own.to_metrics() == pytest.approx(reference.to_metrics())
    # without it, "clean" and "undefended" would be the defense's own classifier (mislabelled as M_t)
    mixed = evaluate(IdentityRestore(), SwapClassifier(), images(Y.tolist()), Y, constructed_sets(), **kwargs).to_metrics()
    assert mixed["acc.clean"] == pytest.approx(4 / 8) and mixed["acc.undefended.PGDu"] == pytest.approx(7 / 8)


def test_frame_has_one_row_per_attack():
    report, _ = run_constructed(holdout=("DDNu",))
    frame = report.to_frame().set_index("attack")
    assert list(frame.columns) == ["targeted", "known", "holdout", "n", "defended", "undefended"]
    assert frame.loc["CWt", "targeted"] and frame.loc["PGDt", "known"] and frame.loc["DDNu", "holdout"]
    assert not frame.loc["PGDu", "known"] and frame.loc["PGDu", "n"] == 8
    assert frame.loc["PGDu", "defended"] == pytest.approx(7 / 8)


def test_defense_runs_in_eval_mode_without_grad_and_mode_is_restored():
    report, defense = run_constructed()
    assert defense.calls and all(call == (False, False) for call in defense.calls)
    assert len(defense.calls) == 3 * 5  # clean + 4 attacks, 8 examples in batches of 3
    assert defense.training
    assert "worst.holdout" not in report.to_metrics() and math.isnan(report.worst_holdout)


def test_per_sample_worst_case_reduces_to_the_per_attack_metrics():
    pred = torch.tensor(DEFENDED_PRED["CWt"])
    assert per_sample_accuracy([robust_masks(pred, Y, torch.full((8,), 3))]) == pytest.approx(4 / 6)
    assert per_sample_accuracy([robust_masks(pred, Y, None)]) == pytest.approx(6 / 8)
    # two attacks both targeted to 3: indices 3 and 4 are num_r of both and leave the denominator
    other = torch.tensor([0, 1, 0, 3, 3, 0, 1, 2])
    both = [robust_masks(pred, Y, torch.full((8,), 3)), robust_masks(other, Y, torch.full((8,), 3))]
    assert per_sample_accuracy(both) == pytest.approx(3 / 6)  # robust: indices 1, 5, 6
    assert math.isnan(per_sample_accuracy([]))


def test_holdout_must_not_contain_a_known_attack():
    with pytest.raises(EvaluationError, match="PGDt"):
        run_constructed(holdout=("DDNu", "PGDt"))
    with pytest.raises(EvaluationError, match="STu"):
        run_constructed(holdout=("STu",))


def test_sets_from_other_data_are_refused():
    sets = constructed_sets()
    sets["PGDu"] = AdvSet("PGDu", sets["PGDu"].x_adv, Y.flip(0), None)
    with pytest.raises(EvaluationError, match="PGDu"):
        evaluate(SwapDefense(), nn.Flatten(), images(Y.tolist()), Y, sets, known_attacks=("PGDt",))


def test_all_known_gives_nan_worst_case():
    report = evaluate(
        SwapDefense(), nn.Flatten(), images(Y.tolist()), Y, constructed_sets(), known_attacks=tuple(DEFENDED_PRED)
    )
    assert math.isnan(report.worst_unknown) and math.isnan(report.worst_unknown_per_sample)


def tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 15 * 15, 10)).eval()


def test_evaluate_a_real_add_defense_on_cached_sets(tmp_path):
    from addd.config import DefenseConfig, NetworkConfig
    from addd.defense import ADDDefense

    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(10, 1, 32, 32, generator=generator), torch.randint(0, 10, (10,), generator=generator)
    model = tiny_classifier()
    cache = AdvCache(tmp_path)
    sets = cache.get_many([AdvRequest("digits", "test", x, y, model, a, budget=0.1) for a in ("PGDu", "PGDt", "DDNu")])
    defense = ADDDefense(DefenseConfig(network=NetworkConfig(width=0.125, channels=1))).train()
    report = evaluate(defense, model, x, y, sets, known_attacks=("PGDu", "PGDt"), holdout=("DDNu",))
    assert defense.training  # mode restored
    with torch.no_grad():
        restored_pred = model(defense.eval().restore(sets["DDNu"].x_adv)).argmax(1)
        undefended_pred = model(sets["PGDt"].x_adv).argmax(1)
    assert report.to_metrics()["acc.defended.DDNu"] == pytest.approx((restored_pred == y).float().mean().item())
    assert report.worst_unknown == report.worst_holdout == report.to_metrics()["acc.defended.DDNu"]
    correct = undefended_pred == y
    num_r = int((correct & (y == 3)).sum())
    assert report.to_metrics()["acc.undefended.PGDt"] == pytest.approx((int(correct.sum()) - num_r) / (10 - num_r))


# ---- no gradient history on any evaluation path -------------------------------------------


def _recording_restore(defense, outputs: list):
    restore = defense.restore

    def recorded(x: torch.Tensor) -> torch.Tensor:
        outputs.append(restore(x))
        return outputs[-1]

    return recorded


def test_add_defense_restore_leaves_no_grad_history_in_evaluation():
    from addd.config import DefenseConfig, NetworkConfig
    from addd.defense import ADDDefense

    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(5, 1, 32, 32, generator=generator), torch.randint(0, 10, (5,), generator=generator)
    model = tiny_classifier()
    defense = ADDDefense(DefenseConfig(network=NetworkConfig(width=0.125, channels=1))).eval()
    assert defense.restore(x).grad_fn is not None  # outside no_grad it has history: the checks below bite

    outputs: list[torch.Tensor] = []
    predict(model, x.clone().requires_grad_(), transform=_recording_restore(defense, outputs), batch_size=2)
    assert len(outputs) == 3

    defense.restore = _recording_restore(defense, outputs)  # what evaluate() calls
    adv = {"PGDu": AdvSet("PGDu", (x + 0.01).clamp(0, 1), y.clone(), None)}
    evaluate(defense, model, x, y, adv, known_attacks=("PGDt",))
    assert len(outputs) == 3 + 2  # reconstruction + PGDu, one batch each
    assert all(not out.requires_grad and out.grad_fn is None for out in outputs)


class CountingFlatten(nn.Flatten):
    """nn.Flatten that counts the images it classifies."""

    def __init__(self) -> None:
        super().__init__()
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return super().forward(x)


def test_reference_predictions_give_the_same_report_without_running_the_target_model_on_the_sets():
    """M_t's predictions made once (reference_predictions) stand for the clean and undefended
    figures: the same report, and the target model then only classifies the restored images."""
    x, sets = images(Y.tolist()), constructed_sets()
    fresh = CountingFlatten()
    plain = evaluate(SwapDefense(), fresh, x, Y, sets, known_attacks=("PGDt",), holdout=("DDNu",), batch_size=3)
    model = CountingFlatten()
    reference = reference_predictions(model, x, sets, batch_size=3)
    assert model.images == 8 * (1 + len(sets))
    model.images = 0
    again = evaluate(SwapDefense(), model, x, Y, sets, known_attacks=("PGDt",), holdout=("DDNu",), batch_size=3,
                     reference=reference)
    assert model.images == 8 * (1 + len(sets))  # reconstruction + one defended pass per set, no undefended pass
    assert fresh.images == 2 * 8 * (1 + len(sets))
    assert again.to_metrics() == plain.to_metrics()
    for attack, (correct, excluded) in plain.masks.items():
        assert torch.equal(again.masks[attack][0], correct) and torch.equal(again.masks[attack][1], excluded)


def test_reference_predictions_of_another_model_or_other_sets_are_refused():
    x, sets = images(Y.tolist()), constructed_sets()
    model = nn.Flatten()
    with pytest.raises(EvaluationError, match="another model"):
        evaluate(SwapDefense(), model, x, Y, sets, known_attacks=("PGDt",),
                 reference=reference_predictions(nn.Flatten(), x, sets))
    partial = reference_predictions(model, x, {k: v for k, v in sets.items() if k != "CWt"})
    with pytest.raises(EvaluationError, match="CWt"):
        evaluate(SwapDefense(), model, x, Y, sets, known_attacks=("PGDt",), reference=partial)
