"""SAILS under real DeepSpeed ZeRO-3: 2 processes (torchrun, gloo, DS_ACCELERATOR=cpu) run tests/zero3_sails.py.
Skipped where deepspeed is not installed.

Every path gives what a plain single-process run gives, bit for bit: the LoRA weights of the init (with and without
the engine) and the features of the selection (with and without the engine).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HUB_CACHE

pytest.importorskip("deepspeed")

CASES = ["select_no_engine", "get_peft_model", "two_step_engine", "select_engine"]


@pytest.fixture(scope="module")
def zero3_results(tmp_path_factory) -> list[dict]:
    """One 2-process launch runs every case (each process's results); a first run JIT-builds DeepSpeed's CPU
    shared-memory op with g++ (about 30 s, cached in ~/.cache/torch_extensions)."""
    out = tmp_path_factory.mktemp("zero3") / "results.json"
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29531",
                    str(Path(__file__).with_name("zero3_sails.py")), str(out), ",".join(CASES)],
                   check=True, timeout=900,
                   env={**os.environ, "HF_HUB_CACHE": HUB_CACHE, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                        "DS_ACCELERATOR": "cpu"})
    return json.loads(out.read_text())


@pytest.mark.slow
def test_zero3_init_equals_plain(zero3_results):
    """get_peft_model on a ZeRO-3 model (the Trainer's order), and the two-step init through the engine: the LoRA
    and norm weights are gathered, and the optimizer's fp32 partitions get the init too (one step from it gives the
    same weights as one step from the get_peft_model init)."""
    for rank_results in zero3_results:
        assert rank_results["get_peft_model"].get("equal") is True, rank_results
        assert rank_results["two_step_engine"].get("equal") is True, rank_results
        assert rank_results["two_step_engine"]["trained_equal"] is True, rank_results


@pytest.mark.slow
def test_zero3_selection_equals_plain(zero3_results):
    """Without an engine (each module's weights gathered for its forward) and through the engine's own hooks (then
    a training step still works), on data that sharding would split unevenly (5 batches per side, 2 processes)."""
    for rank_results in zero3_results:
        for case in ("select_no_engine", "select_engine"):
            assert rank_results[case].get("equal") is True, rank_results
