"""Seen / held-out split of every flagged headline (``arm.eval.heldout``), against hand computations."""

import random

import pytest

from arm.eval.heldout import heldout_split, markdown
from arm.eval.wise import WISE_WEIGHTS
from tests.unit.test_synergy import write_rows


def test_split_rebuilds_each_headline_on_each_part(tmp_path):
    rng = random.Random()
    # VQA (pooled mean over questions), fresh random scores and flags.
    vqa = [{"sample_id": str(i), "stratum": "exists", "score": float(rng.random() < 0.6), "heldout": i % 3 == 0}
           for i in range(60)]
    write_rows(tmp_path, "vqa", vqa)
    # GenEval: the unit is the prompt (its images' mean), the headline the unweighted mean over tags; tag "b" has
    # no held-out prompt, so the held-out part is the mean of tag "a" alone.
    geneval = []
    for p, (tag, held, scores) in enumerate([("a", False, [1, 1]), ("a", True, [1, 0]), ("a", True, [0, 0]),
                                             ("b", False, [0, 0]), ("b", False, [1, 0])]):
        geneval += [{"sample_id": f"{p:05d}/{k:04d}", "stratum": tag, "score": float(s), "heldout": held}
                    for k, s in enumerate(scores)]
    write_rows(tmp_path, "geneval", geneval)
    # WISE: weighted mean of group means.
    groups = sorted(WISE_WEIGHTS)
    wise = [{"sample_id": str(i), "stratum": groups[i % len(groups)], "score": rng.random(), "heldout": i < 6}
            for i in range(12)]
    write_rows(tmp_path, "wise", wise)
    # MME rows carry no flag: left out.
    write_rows(tmp_path, "mme", [{"sample_id": "img#0", "stratum": "existence", "score": 1.0}])
    result = heldout_split(tmp_path, seed=3)
    assert set(result) == {"vqa", "geneval", "wise"}

    for part, flag in (("seen", False), ("heldout", True)):
        scores = [r["score"] for r in vqa if r["heldout"] is flag]
        assert result["vqa"][part]["value"] == pytest.approx(sum(scores) / len(scores))
        assert result["vqa"][part]["units"] == len(scores)
        low, high = result["vqa"][part]["ci95"]
        assert low <= result["vqa"][part]["value"] <= high
        rows = [r for r in wise if r["heldout"] is flag]
        means = {g: [r["score"] for r in rows if r["stratum"] == g] for g in groups}
        means = {g: sum(v) / len(v) for g, v in means.items() if v}
        total = sum(WISE_WEIGHTS[g] for g in means)
        assert result["wise"][part]["value"] == pytest.approx(sum(WISE_WEIGHTS[g] * m for g, m in means.items()) / total)
    # seen: tag a {1.0}, tag b {0.0, 0.5} -> (1.0 + 0.25) / 2; held-out: tag a {0.5, 0.0} -> 0.25.
    assert result["geneval"]["seen"]["value"] == pytest.approx(0.625)
    assert result["geneval"]["heldout"]["value"] == pytest.approx(0.25)
    assert (result["geneval"]["seen"]["units"], result["geneval"]["heldout"]["units"]) == (3, 2)
    table = markdown(result)
    assert "| GenEval | 0.625 [" in table and "(2) |" in table and "MME" not in table


def test_a_part_without_units_is_missing_not_zero(tmp_path):
    write_rows(tmp_path, "vqa", [{"sample_id": str(i), "stratum": "all", "score": 1.0, "heldout": False}
                                 for i in range(4)])
    result = heldout_split(tmp_path)
    assert result["vqa"]["seen"]["value"] == 1.0
    assert result["vqa"]["heldout"] == {"value": None, "ci95": [None, None], "units": 0}
    assert "| VQA acc | 1.000 [1.000, 1.000] (4) | - (0) |" in markdown(result)
