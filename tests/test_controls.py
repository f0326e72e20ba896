"""Control subspaces: random (seeded, orthonormal) and direct (activation differences, no SAE)."""

import torch

from peft_sails import SAILSConfig
from peft_sails.controls import difference_rows, direct_subspace, example_means, random_subspace
from conftest import SAE_REPO


def test_random_subspace_is_orthonormal_and_seeded():
    a, b, c = random_subspace(64, 8, seed=1), random_subspace(64, 8, seed=1), random_subspace(64, 8, seed=2)
    assert torch.allclose(a.basis @ a.basis.T, torch.eye(8), atol=1e-5)
    assert torch.equal(a.basis, b.basis) and not torch.allclose(a.basis, c.basis)


def test_direct_subspace_contains_the_difference_of_means(llama, tokenizer, data):
    aligned, unaligned, _ = data
    config = SAILSConfig(r=4, target_modules=["q_proj"], sae_release=SAE_REPO, sae_ids={1: "x", 2: "y"})
    sub = direct_subspace(llama, tokenizer, config, aligned, unaligned, layers=[1])
    assert sub.basis.shape == (4, llama.config.hidden_size)
    assert torch.allclose(sub.basis @ sub.basis.T, torch.eye(4), atol=1e-5)
    a = example_means(llama, tokenizer, config, aligned, [1])[1]
    u = example_means(llama, tokenizer, config, unaligned, [1])[1]
    diff = a.mean(0) - u.mean(0)
    inside = (sub.basis.double() @ diff.double()).norm() / diff.double().norm()
    assert inside > 0.9  # the leading uncentred principal direction of the differences is their mean
    rows = difference_rows(llama, tokenizer, config, aligned, unaligned, [1, 2])
    assert rows.shape == (2 * (len(aligned) + len(unaligned)), llama.config.hidden_size)
