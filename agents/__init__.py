"""prefsmith agents."""
