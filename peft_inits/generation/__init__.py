"""Adapters generated from reference images (issue 13): the adapter dataset, and a diffusion model over adapter
weights conditioned on a subject's reference images that learns it."""
