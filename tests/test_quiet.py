"""The command lines print their own progress bars and results only; `--verbose` brings the libraries' output back."""

import logging
import subprocess
import sys
import warnings

import datasets
import pytest
import transformers

from peft_sails.bench.cli import cli as bench_cli
from peft_sails.quiet import quiet_libraries

from test_bench_run import TINY_WORLD

# what other libraries print during our commands: bars of datasets / TRL (through datasets.map) / transformers,
# the Trainer's per-step loss dictionaries, transformers' deprecations, bitsandbytes' import notice
NOISE = ("Saving the dataset", "Map", "Tokenizing", "Truncating", "Loading weights", "Writing model shards",
         "Creating json", "Training SAE", "FutureWarning", "{'loss'", "'train_runtime'", "gemm_4bit",
         "Setting accelerator")
QUICKSTART = ["quickstart", "--n_train", "64", "--base_steps", "40", "--sails_steps", "10", "--d_sae", "128",
              "--top_k", "8", "--r", "4"]


def noise_in(text: str) -> list[str]:
    return [marker for marker in NOISE if marker in text]


def test_quiet_libraries_silences_inside_and_restores_everything():
    datasets.enable_progress_bars()
    levels = {name: logging.getLogger(name).level for name in ("trl", "peft", "transformers")}
    verbosity = transformers.utils.logging.get_verbosity()
    filters = list(warnings.filters)
    with quiet_libraries():
        assert not datasets.is_progress_bar_enabled()
        assert not transformers.utils.logging.is_progress_bar_enabled()
        assert logging.getLogger("trl").getEffectiveLevel() == logging.ERROR
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # as pytest does; the known messages must still be dropped
            with quiet_libraries():
                warnings.warn("`gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
                warnings.warn("a warning about the user's own run", UserWarning)
        assert [str(w.message) for w in caught] == ["a warning about the user's own run"]
    assert datasets.is_progress_bar_enabled() and transformers.utils.logging.is_progress_bar_enabled()
    assert transformers.utils.logging.get_verbosity() == verbosity
    assert {name: logging.getLogger(name).level for name in levels} == levels
    assert warnings.filters == filters


def test_verbose_changes_nothing():
    datasets.enable_progress_bars()
    with quiet_libraries(verbose=True):
        assert datasets.is_progress_bar_enabled()


def _quickstart(tmp_path, *extra):
    out = tmp_path / "run"
    return subprocess.run([sys.executable, "-m", "peft_sails.cli", *QUICKSTART, "--output_dir", str(out),
                           "--sae_repo", f"local-org/quiet-{len(extra)}", *extra],
                          capture_output=True, text=True, check=True)


@pytest.mark.slow
def test_quickstart_prints_only_its_own_bars_and_results(tmp_path):
    run = _quickstart(tmp_path)
    assert noise_in(run.stdout + run.stderr) == []
    assert "aligning the SAILS adapter" in run.stderr  # our own bar, with its ETA
    assert "Reloaded with plain peft" in run.stdout and "Files:" in run.stdout
    assert str(tmp_path / "run" / "sails-adapter") in run.stdout


@pytest.mark.slow
def test_quickstart_verbose_shows_the_libraries_output(tmp_path):
    run = _quickstart(tmp_path, "--verbose")
    shown = noise_in(run.stdout + run.stderr)
    assert {"Tokenizing", "FutureWarning", "{'loss'"} <= set(shown)
    bnb = subprocess.run([sys.executable, "-c", "import peft"], capture_output=True, text=True)
    if "gemm_4bit" in bnb.stderr:  # bitsandbytes installed on a CPU where it prints its notice
        assert "gemm_4bit" in shown


@pytest.mark.slow
def test_bench_prints_its_stages_the_table_and_every_file(tmp_path, capfd):
    argv = ["--run_name", "tiny", "--results_dir", str(tmp_path / "results"), "--output_dir", str(tmp_path / "out"),
            "--cache_dir", str(tmp_path / "cache"), "--methods", "lora", "sails", "--ablations", "sails",
            "--n_train", "2", "--seeds", "2", "--steps", "3", "--lr_grid", "1e-3", "--sweep_seeds", "1"]
    bench_cli(argv, TINY_WORLD)  # (--ablations sails: already a method, so no ablation runs)
    out, err = capfd.readouterr()
    assert noise_in(out + err) == []
    for stage in ("world: pre-training the base model", "stage 1-2 per method", "learning-rate sweep", "alignment runs",
                  "inspecting the adapters of seed 0"):
        assert stage in err
    assert "SAILS subspace: loading SAEs" not in err  # one bar per stage, not one per adapter
    assert "paired difference to plain LoRA" in out
    for path in ("tiny.json", "tiny.md", "tiny-inspect/sails/", "tiny-inspect/lora/", "adapters/tiny/<method>"):
        assert path in out
    report = (tmp_path / "results" / "tiny.md").read_text()
    assert "What the adapters changed" in report and "tiny-inspect/lora/subspace_share.png" in report
    assert (tmp_path / "results" / "tiny-inspect" / "sails" / "features_harmful.png").exists()
