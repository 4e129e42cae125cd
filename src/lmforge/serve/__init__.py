"""Text generation from a trained checkpoint; imported only by the commands that need torch."""
