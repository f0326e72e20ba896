"""Register the SAILS tuner with stock peft (its `PeftType` enum is closed, so the registries are written directly)."""

from __future__ import annotations

from importlib.metadata import version

from packaging.version import Version

from .config import SAILS_PEFT_TYPE, SAILSConfig
from .model import SailsModel

SUPPORTED_PEFT = (Version("0.21.0"), Version("0.22.0"))  # [min, max): registries checked on these versions


def check_peft_version(installed: str | None = None) -> None:
    installed = Version(installed or version("peft"))
    low, high = SUPPORTED_PEFT
    if not low <= installed < high:
        raise ImportError(
            f"peft-sails supports peft >= {low}, < {high} (it writes into peft's method registries); found peft "
            f"{installed}. Install a supported version: pip install 'peft>={low},<{high}'."
        )


def register() -> None:
    """Make `get_peft_model(model, SAILSConfig(...))` build a `SailsModel`. Idempotent."""
    check_peft_version()
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    PEFT_TYPE_TO_CONFIG_MAPPING[SAILS_PEFT_TYPE] = SAILSConfig
    PEFT_TYPE_TO_TUNER_MAPPING[SAILS_PEFT_TYPE] = SailsModel
    PEFT_TYPE_TO_PREFIX_MAPPING[SAILS_PEFT_TYPE] = SailsModel.prefix
