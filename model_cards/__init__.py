"""Model card templates (shipped inside the package as `peft_sails.model_cards`)."""
