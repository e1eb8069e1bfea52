"""Studies built on the library: method comparisons and sweeps, the convergence benchmark (`protocol` holds its
statistics, `convergence` runs it), descriptor studies and the Block-wise LoRA ablation."""
