"""What is true of a model, read from its files: `inspection.inspect` (ModelInfo from headers),
the openness card, licenses, and the model card with its front matter."""
