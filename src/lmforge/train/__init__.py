"""Pretraining loop and checkpoint files; imported only by the commands that need torch."""
