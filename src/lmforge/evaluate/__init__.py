"""Model evaluation; imported only by the commands that need torch."""
