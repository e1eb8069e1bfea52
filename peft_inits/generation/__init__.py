"""Zero-shot adapters: a diffusion model over adapter weights, conditioned on a subject's reference images."""
