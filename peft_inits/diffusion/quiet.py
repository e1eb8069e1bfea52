"""Keep library notes that are not the user's concern out of the SD runner's output.

transformers 5.x logs, once per image-processor class, that torchvision is missing and it falls back to the PIL
backend (`CLIPImageProcessor` and `SiglipImageProcessor` when diffusers loads its pipelines). The runner never
processes images through them, so those two lines are noise on every `sd.py` call; nothing else is filtered.
"""

from __future__ import annotations

import logging

_LOGGER = "transformers.utils.import_utils"
_NOTE = "requires torchvision (not installed); falling back to"


class _DropTorchvisionFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _NOTE not in record.getMessage()


def silence_image_processor_fallback() -> None:
    """Drop transformers' torchvision-fallback notes (idempotent; call before diffusers is imported)."""
    logger = logging.getLogger(_LOGGER)
    if not any(isinstance(f, _DropTorchvisionFallback) for f in logger.filters):
        logger.addFilter(_DropTorchvisionFallback())
