"""The architecture registry: one module per Hugging Face `model_type` (work in progress)."""
