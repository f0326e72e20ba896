"""SAEs read in parts (`peft_sails.sae_files`) equal sae-lens' whole load, for every format read that way."""

import logging
import shutil
import zipfile

import numpy as np
import pytest
import torch
from conftest import HUB_CACHE
from replica import gemma_scope_replica, llama_scope_replica, repo_folder

from peft_sails.offline import make_sae, save_sae_to_hub_cache
from peft_sails.sae_files import decode_active, load_sae_parts, stored_npz
from peft_sails.sae_loading import load_sae

GEMMA = ("gemma-scope-2b-pt-res-canonical", "layer_3/width_16k/canonical")
LLAMA = ("llama_scope_lxr_8x", "l5r_8x")
OWN = ("local-org/parts-saes", "layer_1")


@pytest.fixture(scope="module")
def saes(tmp_path_factory):
    """One SAE of each format: Gemma Scope (npz), Llama Scope (bf16, transposed, norm factor folded at load),
    sae-lens' own format from a Hub repo, and from a local folder."""
    gemma_scope_replica(HUB_CACHE, "2b", [3])
    llama_scope_replica(HUB_CACHE, [5], d_sae=2048)
    torch.manual_seed(0)
    own = make_sae(torch.nn.functional.normalize(torch.randn(96, 48), dim=1), "blocks.1.hook_resid_post", "tiny-llama",
                   b_enc=torch.randn(96))
    save_sae_to_hub_cache(own, *OWN, HUB_CACHE)
    local = tmp_path_factory.mktemp("local-sae")
    own.save_model(local)
    yield {"gemma": GEMMA, "llama": LLAMA, "own": OWN, "local": (str(local), "any-id")}
    for repo in ("google/gemma-scope-2b-pt-res", "fnlp/Llama3_1-8B-Base-LXR-8x"):
        shutil.rmtree(repo_folder(HUB_CACHE, repo), ignore_errors=True)


@pytest.mark.parametrize("kind", ["gemma", "llama", "own", "local"])
def test_parts_equal_the_whole_sae(saes, kind):
    release, sae_id = saes[kind]
    whole = load_sae(release, sae_id)
    sae, rows = load_sae_parts(release, sae_id)
    assert type(sae) is type(whole) and sae.cfg.metadata.hook_name == whole.cfg.metadata.hook_name
    assert sae.cfg.metadata.neuronpedia_id == whole.cfg.metadata.neuronpedia_id
    assert sae.W_dec.stride() == (0, 0) and sae.W_dec.untyped_storage().nbytes() <= 4  # never loaded
    g = torch.Generator().manual_seed(1)
    x = torch.randn(70, whole.cfg.d_in, generator=g) * 3 + whole.b_dec.detach() * 2
    acts = sae.encode(x)
    assert torch.equal(acts, whole.encode(x)) and (acts != 0).any()
    ids = [0, 7, whole.cfg.d_sae // 2, whole.cfg.d_sae - 1]
    assert torch.equal(rows(ids), whole.W_dec[ids].detach())  # incl. Llama Scope's folded 1/s
    unordered = [9, 3, 4, 3, 5, 0]  # runs of consecutive ids are read at once; order and repeats are kept
    assert torch.equal(rows(unordered), whole.W_dec[unordered].detach())
    # the same sums in another order (thousands of float32 terms per output here)
    torch.testing.assert_close(decode_active(sae, acts, rows, tokens=16), whole.decode(acts), rtol=1e-4, atol=1e-4)
    bare, bare_rows = load_sae_parts(release, sae_id, encoder=False)
    assert bare.W_enc.stride() == (0, 0) and bare.W_dec.stride() == (0, 0)
    assert torch.equal(bare_rows(ids), rows(ids))


def test_compressed_npz_is_read_whole(saes, caplog):
    """A format that cannot be read in parts (here np.savez_compressed) is loaded whole by sae-lens, and says so."""
    path = next(repo_folder(HUB_CACHE, "google/gemma-scope-2b-pt-res").glob("snapshots/*/layer_3/*/*/params.npz"))
    blob = path.resolve()
    assert stored_npz(blob) is not None
    with np.load(blob) as data:
        arrays = {key: data[key] for key in data}
    original = blob.read_bytes()
    try:
        blob.unlink()
        with open(blob, "wb") as f:
            np.savez_compressed(f, **arrays)
        assert stored_npz(blob) is None
        with caplog.at_level(logging.INFO, logger="peft_sails.sae_files"):
            sae, rows = load_sae_parts(*GEMMA)
        assert "read whole" in caplog.text
        assert sae.W_dec.stride() != (0, 0) and torch.equal(rows([3]), sae.W_dec[[3]].detach())
        acts = sae.encode(torch.randn(40, sae.cfg.d_in) * 3)
        torch.testing.assert_close(decode_active(sae, acts, rows, tokens=16), sae.decode(acts), rtol=1e-5, atol=1e-5)
    finally:
        blob.write_bytes(original)
    with zipfile.ZipFile(blob) as archive:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
