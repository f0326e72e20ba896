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

from .quiet import hold_import_notices

hold_import_notices()  # only in our own commands: bitsandbytes' notice when peft imports it (see peft_sails.quiet)

from .config import SAILSConfig  # noqa: E402
from .initialization import get_sails_state_dict, initialize_sails_weights  # noqa: E402
from .loading import load_sails_adapter  # noqa: E402
from .model import SailsModel  # noqa: E402
from .registration import register  # noqa: E402
from .selection import rank_features, select_features, select_reader_features  # noqa: E402
from .subspace import build_subspace  # noqa: E402

__version__ = "0.2.0"
__all__ = [
    "SAILSConfig",
    "SailsModel",
    "build_subspace",
    "get_sails_state_dict",
    "initialize_sails_weights",
    "load_sails_adapter",
    "rank_features",
    "register",
    "select_features",
    "select_reader_features",
]

register()
