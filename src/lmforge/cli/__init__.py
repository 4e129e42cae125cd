"""Command-line interface: one thin module per command over a library function."""
