"""experiments/population_seeds.py (issue 21: does population training speed up the study's SD seeds?) on the tiny
pipeline: every configuration trains, and the reported speed-ups are the ratios of the times it reports."""

import math

import pytest
from runner_helpers import load_script


def test_population_seeds_times_every_configuration(tmp_path):
    script = load_script("population_seeds")
    args = script.parse_args(["--model", "tiny", "--method", "svfit", "--lr", "0.1", "--seeds", "2,3", "--steps", "1",
                              "--output", str(tmp_path / "times.json")])  # fmt: skip
    result = script.main(args)
    assert sorted(result["populations"]) == [2, 3]
    study, alone = result["study_loop_s_per_step"], result["population_1_s_per_step"]
    assert study > 0 and alone > 0
    for size, row in result["populations"].items():
        assert row["s_per_step_per_adapter"] == pytest.approx(row["s_per_step"] / size)
        assert row["speedup_vs_study_loop"] == pytest.approx(study * size / row["s_per_step"])
        assert row["speedup_vs_population_1"] == pytest.approx(alone * size / row["s_per_step"])
        assert math.isfinite(row["speedup_vs_study_loop"])
    assert (tmp_path / "times.json").is_file()
