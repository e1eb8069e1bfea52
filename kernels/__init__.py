"""Triton kernels of the adapter path, imported as `peft_inits.kernels` (see DESIGN.md §4)."""
