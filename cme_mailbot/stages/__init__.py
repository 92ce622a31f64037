"""The pipeline's stages, one module each, in order: parse, automatic, sender, extract, decide."""
