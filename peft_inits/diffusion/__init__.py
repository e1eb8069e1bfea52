"""Stable Diffusion adapter engine: pipelines, DreamBooth objective and data, sampling, composition, metrics."""
