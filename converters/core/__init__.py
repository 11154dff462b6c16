"""The small core every other part imports: errors (`ItamaeError(problem, hint)`), `ModelInfo`,
and the hostile-input-safe JSON reader for model files."""
