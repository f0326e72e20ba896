"""The README's main job, shrunk: every stage runs and the adapter reloads bit for bit without the plugin."""

import subprocess
import sys

import pytest

from peft_sails.quickstart import QuickstartArguments, main


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    args = QuickstartArguments(output_dir=str(tmp_path), sae_repo="local-org/quickstart-saes", n_train=64,
                               base_steps=40, sails_steps=10, d_sae=128, top_k=8, r=4)
    report = main(args)
    assert report["reload_bit_identical"] is True
    # r * (in + out) per module: q, o 64->64; k, v 64->32; gate, up 64->128; down 128->64; 4 layers
    assert report["trainable_params"] == 4 * 4 * (2 * 128 + 2 * 96 + 3 * 192)
    assert 0 < report["trainable_share"] < 1
    assert all(ev > 0.5 for ev in report["sae_explained_variance"].values())
    assert (tmp_path / "sails-adapter" / "sails_config.json").exists() and (tmp_path / "quickstart.json").exists()


@pytest.mark.parametrize("argv", [["--help"], ["quickstart", "--help"]])
def test_cli_help(argv):
    out = subprocess.run([sys.executable, "-m", "peft_sails.cli", *argv], capture_output=True, text=True, check=True)
    assert "usage: peft-sails" in out.stdout
