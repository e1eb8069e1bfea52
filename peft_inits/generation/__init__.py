"""Adapters generated from reference images (issue 13): the adapter dataset, and the generator that learns it."""
