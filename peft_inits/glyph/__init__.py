"""The glyph world: captioned renders of glyphs, its concepts, its judge, and the small text-to-image model pretrained
on it and shipped with the package (the CPU stand-in for Stable Diffusion that every SD command defaults to)."""
