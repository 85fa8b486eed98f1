"""Model registry, volumes, preprocessing, embedding cache and the slice predictor."""
