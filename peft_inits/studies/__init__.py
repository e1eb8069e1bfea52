"""Studies built on the library: method comparisons, sweeps, descriptor studies and the Block-wise LoRA ablation."""
