"""prefsmith tools."""
