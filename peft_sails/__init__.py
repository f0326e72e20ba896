"""peft-sails: safety alignment with LoRA initialised in an SAE-built subspace (SAILS, arXiv 2512.23260).

    import peft_sails                       # registers the tuner with stock peft
    from peft import get_peft_model
    from peft_sails import SAILSConfig, select_features

    config = SAILSConfig(r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                         sae_release="gemma-scope-2b-pt-res-canonical",
                         sae_ids={5: "layer_5/width_16k/canonical"}, top_k=64)
    config = select_features(model, tokenizer, config, aligned=aligned_ds, unaligned=unaligned_ds)
    model = get_peft_model(model, config)
"""

from .config import SAILSConfig
from .initialization import initialize_sails_weights
from .loading import load_sails_adapter
from .model import SailsModel
from .registration import register
from .selection import rank_features, select_features
from .subspace import build_subspace

__version__ = "0.2.0"
__all__ = [
    "SAILSConfig",
    "SailsModel",
    "build_subspace",
    "initialize_sails_weights",
    "load_sails_adapter",
    "rank_features",
    "register",
    "select_features",
]

register()
