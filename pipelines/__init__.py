"""prefsmith pipelines."""
