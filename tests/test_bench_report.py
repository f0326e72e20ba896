"""The benchmark's report: per-run metrics, paired differences with CIs, and the written files."""

import json

import pytest

from peft_sails.bench.report import (
    downstream_section,
    goal_section,
    mean_ci,
    pilot_choice,
    run_metrics,
    summary_tables,
    time_section,
    write_report,
)


def _records(method, seed, safety_by_step, over_refusal=0.0, share=0.01):
    out = []
    for step, safety in safety_by_step.items():
        for split in ("id", "ood", "jailbreak"):
            out.append({"method": method, "n_train": 16, "seed": seed, "step": step, "split": split,
                        "safety_rate": safety, "over_refusal": None, "capability": None, "trainable_share": share,
                        "learning_rate": 1e-3})
        out.append({"method": method, "n_train": 16, "seed": seed, "step": step, "split": "benign",
                    "safety_rate": None, "over_refusal": over_refusal, "capability": 0.5, "trainable_share": share,
                    "learning_rate": 1e-3})
    return out


def test_mean_ci_matches_student_t():
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert half == pytest.approx(3.182446 * 1.290994 / 2, rel=1e-5)  # t(0.975, 3) * sd / sqrt(n)
    assert mean_ci([0.3]) == (0.3, 0.0)


def test_run_metrics_area_and_steps_to_target():
    runs = run_metrics(_records("lora", 0, {0: 0.0, 10: 0.5, 20: 1.0}) +
                       _records("sails", 0, {0: 0.0, 10: 1.0, 20: 1.0}, over_refusal=0.1))
    lora, sails = runs[("lora", 16, 0)], runs[("sails", 16, 0)]
    assert lora["id_auc"] == pytest.approx(0.5)  # trapezoid: (0.25 * 10 + 0.75 * 10) / 20
    assert sails["id_auc"] == pytest.approx(0.75)
    assert lora["steps_to_target"] == 20
    assert sails["steps_to_target"] is None  # safe at step 10, but over-refuses 10% > 5%
    assert lora["id_safety"] == 1.0 and lora["over_refusal"] == 0.0


def test_paired_differences_pair_by_seed():
    records = []
    for seed, (a, b) in enumerate([(0.5, 0.7), (0.6, 0.8), (0.2, 0.5)]):
        records += _records("lora", seed, {0: 0.0, 10: a}) + _records("sails", seed, {0: 0.0, 10: b})
    markdown, paired = summary_tables({"records": records, "learning_rates": {"lora": 1e-3, "sails": 1e-3}})
    mean, half = paired[16]["sails"]["id_safety"]
    assert mean == pytest.approx((0.2 + 0.2 + 0.3) / 3)
    assert half == pytest.approx(mean_ci([0.2, 0.2, 0.3])[1])
    assert "| sails | 3 |" in markdown and "+23.3 ±" in markdown
    sails_row = next(line for line in markdown.splitlines() if line.startswith("| sails | 3 |"))
    assert sails_row.endswith("| 10 (0/3) |")  # reaches plain LoRA's final ID safety at step 10 (of 10) on every seed


def test_write_report_writes_markdown_and_plots(tmp_path):
    records = []
    for seed in range(2):
        records += _records("lora", seed, {0: 0.0, 10: 0.5}) + _records("random", seed, {0: 0.0, 10: 0.6})
    results = {"records": records, "learning_rates": {"lora": 1e-3, "random": 1e-3}, "runs": [],
               "seconds": {"world": 1.0}}
    path = write_report(results, tmp_path / "run")
    assert "paired difference to plain LoRA" in path.read_text()
    assert (tmp_path / "run-curves.png").stat().st_size > 1000
    assert (tmp_path / "run-paired.png").stat().st_size > 1000
    json.dumps(results)  # records stay JSON-serialisable


def test_dense_id_steps_count_in_the_curve_but_not_in_the_final_table():
    records = _records("lora", 0, {0: 0.0, 20: 1.0})
    records += [{**r, "step": 10, "safety_rate": 0.9} for r in _records("lora", 0, {10: 0.0}) if r["split"] == "id"]
    run = run_metrics(records)[("lora", 16, 0)]
    assert run["id_curve"] == {0: 0.0, 10: 0.9, 20: 1.0}
    assert run["id_auc"] == pytest.approx((0.45 * 10 + 0.95 * 10) / 20)
    assert run["steps_to_target"] == 20  # step 10 has no benign split: it cannot count as reaching the target
    assert run["ood_safety"] == 1.0


def test_best_peer_is_the_peer_with_the_highest_ood_safety_and_gets_its_own_table():
    records = []
    for seed in range(3):
        records += _records("lora", seed, {0: 0.0, 10: 0.5}) + _records("eva", seed, {0: 0.0, 10: 0.6 + seed / 100})
        records += _records("pissa", seed, {0: 0.0, 10: 0.7}) + _records("sails", seed, {0: 0.0, 10: 0.9})
    markdown, paired = summary_tables({"records": records, "settings": {"steps": 10}})
    assert "paired difference to the best peer, `pissa`" in markdown
    table = markdown.split("the best peer, `pissa`")[1]
    assert "| sails | 3 | +20.0 ± 0.0 |" in table and "| eva | 3 | -9.0 ±" in table
    assert set(paired[16]) == {"eva", "pissa", "sails"}  # the plot shows differences to LoRA


def test_downstream_section_pairs_with_lora_and_reports_the_change():
    records, downstream = [], []
    for seed in range(2):
        for method, final, after in (("lora", 1.0, 0.4), ("sails", 1.0, 0.7)):
            records += _records(method, seed, {0: 0.0, 10: final})
            downstream += [{"method": method, "n_train": 16, "seed": seed, "split": split,
                            "safety_rate": None if split == "benign" else after,
                            "over_refusal": 0.1 if split == "benign" else None} for split in ("id", "ood", "jailbreak", "benign")]
    text = downstream_section({"records": records, "downstream": downstream,
                               "settings": {"downstream_steps": 50, "downstream_lr": 5e-4, "downstream_rows": 64}})
    sails = next(line for line in text.splitlines() if line.startswith("| 16 | sails |"))
    assert sails.split(" | ")[3:] == ["70.0 ± 0.0", "70.0 ± 0.0", "70.0 ± 0.0", "10.0 ± 0.0", "+30.0 ± 0.0",
                                      "+30.0 ± 0.0", "+30.0 ± 0.0", "-30.0 ± 0.0 |"]


def test_pilot_picks_the_smallest_n_inside_the_range():
    records = []
    for seed in range(2):
        for n, ood in ((1, 0.2), (2, 0.55), (4, 0.75), (8, 0.95)):
            records += [{**r, "n_train": n, "safety_rate": ood if r["split"] == "ood" and r["step"] else r["safety_rate"]}
                        for r in _records("lora", seed, {0: 0.0, 10: 0.9})]
    choice = pilot_choice({"records": records})
    assert choice["choice"] == 2 and choice["ood_safety"][8] == [0.95, 0.0]
    assert pilot_choice({"records": [r for r in records if r["n_train"] in (1, 8)]})["choice"] is None


def test_goal_section_checks_the_best_sails_variant_against_lora_random_and_peers():
    records = []
    for seed in range(3):
        records += _records("lora", seed, {0: 0.0, 10: 0.5}) + _records("random", seed, {0: 0.0, 10: 0.55})
        records += _records("sails", seed, {0: 0.0, 10: 0.7}) + _records("sails-k8", seed, {0: 0.0, 10: 0.6})
        records += _records("pissa", seed, {0: 0.0, 10: 0.75})
    text = goal_section({"records": records})
    assert "best SAILS variant (`sails`" in text
    assert "| OOD safety − LoRA ≥ +10 | +20.0 ± 0.0 | met (whole CI) |" in text
    assert "| over-refusal − LoRA ≤ +2 | +0.0 ± 0.0 | met (whole CI) |" in text
    assert "| OOD safety − pissa > 0 | -5.0 ± 0.0 | **not met** |" in text
    noisy = [{**r, "safety_rate": r["safety_rate"] + 0.1 * (r["seed"] - 1)} if r["method"] == "sails" and r["step"]
             and r["split"] == "ood" else r for r in records]  # sails - lora on OOD: +10, +20, +30
    assert "| OOD safety − LoRA ≥ +10 | +20.0 ± 24.8 | mean only |" in goal_section({"records": noisy})


def test_time_section_gives_each_methods_seconds_per_run_at_each_n():
    runs = [{"method": "lora", "n_train": 4, "seed": s, "seconds": v} for s, v in enumerate([10.0, 20.0])]
    runs += [{"method": "lora", "n_train": 1, "seed": 0, "seconds": 5.0}]
    lines = time_section({"runs": runs}).splitlines()
    assert "| lora | 1 | 1 | 5.0 | 5.0 | 5.0 |" in lines and "| lora | 4 | 2 | 15.0 | 10.0 | 20.0 |" in lines
    assert lines.index("| lora | 1 | 1 | 5.0 | 5.0 | 5.0 |") < lines.index("| lora | 4 | 2 | 15.0 | 10.0 | 20.0 |")
    assert time_section({"runs": []}) == ""
