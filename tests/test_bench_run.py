"""`peft-sails bench` end to end on a tiny world: records, resume, cache, saved adapters, report, arguments."""

import dataclasses
import json

import pytest
import torch
from peft import PeftModel

from peft_sails import SAILSConfig
from peft_sails.bench.cli import BenchArguments, cli, run_bench
from peft_sails.bench.methods import METHODS
from peft_sails.bench.corpus import CorpusConfig
from peft_sails.bench.world import WorldConfig, build_world

REQUIRED = {"method", "n_train", "seed", "step", "split", "safety_rate", "over_refusal", "capability", "trainable_share"}
TINY_WORLD = WorldConfig(
    corpus=CorpusConfig(n_pretrain_harmful=200, n_pretrain_benign=200, n_pretrain_echo=50, n_test=16, n_validation=16),
    hidden_size=32, intermediate_size=64, num_heads=4, pretrain_steps=10, d_sae=64, sae_k=4, sae_epochs=1)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    args = BenchArguments(run_name="tiny", results_dir=str(root / "results"), output_dir=str(root / "out"),
                          cache_dir=str(root / "cache"),
                          methods=["lora", "sails", "direct", "random", "full", "refusal-dir", "pissa", "sails-two-sided"],
                          ablations=["sails-frozen-a", "sails-w512"], n_train=[2], seeds=2, steps=3, lr_grid=[1e-3],
                          sweep_seeds=1, id_every=1, downstream_steps=2)
    return args, run_bench(args, TINY_WORLD), root


@pytest.mark.slow
def test_records_cover_every_method_seed_split_and_step(bench):
    args, results, root = bench
    records = results["records"]
    assert all(REQUIRED <= set(r) for r in records)
    assert {r["split"] for r in records} == {"id", "ood", "jailbreak", "benign"}
    assert {(r["method"], r["seed"]) for r in records} == {(m, s) for m in args.methods + args.ablations for s in (0, 1)}
    assert {r["step"] for r in records} == {0, 1, 2, 3}
    downstream = results["downstream"]  # benign fine-tuning after alignment: every run, every test split
    assert {(r["method"], r["seed"], r["split"]) for r in downstream} == {
        (m, s, split) for m in args.methods + args.ablations for s in (0, 1) for split in ("id", "ood", "jailbreak", "benign")}
    share = {r["method"]: r["trainable_share"] for r in records}
    assert share["full"] == 1.0 and 0 < share["lora"] == share["sails"] < 1
    assert share["sails-frozen-a"] < share["sails"]  # the readers' A does not train
    assert set(results["learning_rates"]) == set(args.methods)  # the ablations reuse their parent's rate
    assert results["learning_rates"]["full"] == pytest.approx(1e-4)
    on_disk = json.loads((root / "results" / "tiny.json").read_text())
    assert len(on_disk["records"]) == len(records)
    report = (root / "results" / "tiny.md").read_text()
    assert "paired difference to plain LoRA" in report and "What the subspaces hold" in report
    assert "paired difference to the best peer, `pissa`" in report and "Does the alignment last?" in report
    assert "sails-two-sided" in results["analysis"]["overlap_with_request_direction"]
    assert (root / "results" / "tiny-curves.png").exists() and (root / "results" / "tiny-paired.png").exists()


@pytest.mark.slow
def test_sae_variant_arm_uses_its_own_saes(bench):
    args, results, root = bench
    world = build_world(TINY_WORLD, root / "cache")
    repo, _ = world.sae_variant(METHODS["sails-w512"].sae)  # cached by the run: no training here
    assert repo != world.sae_repo and set(world.sae_variant_quality()) == {"512x16-e4-w1000"}
    config = SAILSConfig.from_pretrained(str(root / "out" / "adapters" / "tiny" / "sails-w512" / "n2-seed0"))
    assert config.sae_release == repo and max(f["id"] for fs in config.features.values() for f in fs) < 512


@pytest.mark.slow
def test_pilot_runs_lora_only_and_its_choice_reaches_the_full_report(bench):
    args, _, root = bench
    pilot = BenchArguments(pilot=True, run_name="tiny-pilot", results_dir=args.results_dir, output_dir=args.output_dir,
                           cache_dir=args.cache_dir, n_train=[1, 2], seeds=2, steps=3, lr_grid=[1e-3], sweep_seeds=1)
    assert (pilot.methods, pilot.ablations, pilot.downstream_steps) == (["lora"], [], 0)
    found = run_bench(pilot, TINY_WORLD)["pilot"]
    assert set(found["ood_safety"]) == {1, 2} and found["range"] == [0.5, 0.8]
    assert found["choice"] in (None, 1, 2)
    assert "## Pilot (plain LoRA only" in (root / "results" / "tiny-pilot.md").read_text()
    again = run_bench(args, TINY_WORLD)  # nothing left to train; the report now shows the pilot
    assert again["pilot"]["ood_safety"] == {str(n): v for n, v in found["ood_safety"].items()}
    assert "## Pilot (plain LoRA only" in (root / "results" / "tiny.md").read_text()


@pytest.mark.slow
def test_rerun_resumes_and_reuses_the_cached_world(bench):
    args, results, root = bench
    manifest = next((root / "cache").glob("*/world.json"))
    built = manifest.stat().st_mtime_ns
    again = run_bench(args, TINY_WORLD)
    assert again["runs"] == results["runs"]  # nothing trained again
    assert manifest.stat().st_mtime_ns == built
    assert build_world(TINY_WORLD, root / "cache").stats["base"] == results["world"]["base"]


@pytest.mark.slow
def test_resuming_with_other_settings_is_refused(bench):
    args, results, root = bench
    with pytest.raises(ValueError, match="would not be comparable"):
        run_bench(dataclasses.replace(args, steps=args.steps + 1), TINY_WORLD)
    assert json.loads((root / "results" / "tiny.json").read_text())["runs"] == results["runs"]  # nothing lost


@pytest.mark.slow
def test_saved_adapters_load_with_plain_peft(bench):
    args, _, root = bench
    world = build_world(TINY_WORLD, root / "cache")
    assert (root / "out" / world.model_dir.name / "config.json").exists()
    ids = torch.tensor([[world.tokenizer().bos_token_id, 5, 6, 7]])
    for method in ("sails", "direct", "random"):
        model = PeftModel.from_pretrained(world.model(), str(root / "out" / "adapters" / "tiny" / method / "n2-seed0"))
        assert torch.isfinite(model(input_ids=ids).logits).all()


@pytest.mark.slow
def test_report_inspects_one_seeds_sails_and_lora_adapters(bench):
    _, results, root = bench
    inspection = results["inspection"]
    assert (inspection["n_train"], inspection["seed"]) == (2, 0) and set(inspection["adapters"]) == {"sails", "lora"}
    sails, lora = (inspection["adapters"][m]["weights"]["all"] for m in ("sails", "lora"))
    assert sails["mean_share"] > lora["mean_share"]  # 3 steps: SAILS is still inside its subspace, LoRA is not
    for method in ("sails", "lora"):
        written = {p.name for p in (root / "results" / "tiny-inspect" / method).iterdir()}
        assert {"report.md", "report.json", "subspace_share.png", "features_harmful.png"} <= written
    report = (root / "results" / "tiny.md").read_text()
    assert "What the adapters changed" in report and "(tiny-inspect/sails/report.md)" in report


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="Unknown methods"):
        BenchArguments(methods=["lora", "qlora"])
    with pytest.raises(ValueError, match="must include 'lora'"):
        BenchArguments(methods=["sails"])
    quick = BenchArguments(quick=True)
    assert quick.run_name == "quick" and quick.ablations == [] and len(quick.n_train) == 1
    with pytest.raises(ValueError, match="Unknown world"):
        BenchArguments(world="huge")
    with pytest.raises(ValueError, match="--device cuda, but torch sees no CUDA device"):
        BenchArguments(device="cuda")


def test_world_presets_keep_todays_world_and_differ_from_it():
    default = BenchArguments().world_config()
    assert default.key() == "9c034f13a0b8"  # the cached world and the committed results of 0.2 keep their key
    hard, gpu = BenchArguments(world="hard"), BenchArguments(world="gpu")
    assert hard.world_config().corpus.preset == "hard" and hard.world_config().key() != default.key()
    assert (hard.run_name, BenchArguments(world="hard", pilot=True).run_name) == ("hard", "hard-pilot")
    assert gpu.world_config().hidden_size == 768 and gpu.world_config().device == "cpu"  # the device is --device


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        cli(["--help"])
    assert "--quick" in capsys.readouterr().out


def test_results_from_before_0_3_resume_only_with_their_scoring_schedule(tmp_path):
    from peft_sails.bench.cli import _check_resumable

    old = {"runs": [{"method": "lora", "n_train": 4, "seed": 0}], "world": {"key": "k"}, "settings": {"steps": 100}}
    _check_resumable(old, "k", BenchArguments(id_every=0, downstream_steps=0), tmp_path / "full.json")  # 0.2's schedule
    with pytest.raises(ValueError, match="would not be comparable"):
        _check_resumable(old, "k", BenchArguments(), tmp_path / "full.json")  # dense ID scoring: refused
    with pytest.raises(ValueError, match="eval_fractions"):
        _check_resumable(old, "k", BenchArguments(quick=True), tmp_path / "quick.json")  # quick scores at 3 points


def test_runs_at_a_learning_rate_the_sweep_no_longer_picks_run_again():
    from peft_sails.bench.cli import _drop_stale_runs

    def run(method, seed, lr):
        return {"method": method, "n_train": 4, "seed": seed, "step": 100, "split": "ood", "learning_rate": lr}

    results = {"records": [run("lora", 0, 1e-3), run("lora", 1, 1e-3), run("sails", 0, 1e-3), run("sails-k16", 0, 1e-3),
                           run("eva", 0, 5e-4)],
               "runs": [{"method": m, "n_train": 4, "seed": s} for m, s in [("lora", 0), ("sails", 0), ("eva", 0)]],
               "downstream": [{"method": "sails", "n_train": 4, "seed": 0, "split": "ood"}], "inspection": {"n_train": 4}}
    stale = _drop_stale_runs(results, {"lora": 1e-3, "sails": 2e-3})  # eva not run this time: kept
    assert stale == {("sails", 4, 0), ("sails-k16", 4, 0)}  # sails-k16 trains at sails' rate
    assert {r["method"] for r in results["records"]} == {"lora", "eva"}
    assert [r["method"] for r in results["runs"]] == ["lora", "eva"] and results["downstream"] == []
    assert "inspection" not in results  # it read the stale sails adapter
