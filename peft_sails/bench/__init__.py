"""`peft-sails bench`: the offline benchmark of SAILS against plain LoRA and controls (see benchmarks/README.md)."""
