"""prefsmith training."""
