"""Stable Diffusion pieces of the SD runner: pipelines, image data, sampling, composition."""
