"""Model definitions; imported only by the commands that need torch."""
