"""The command-line layer: one module per group of commands; each parses its options, calls one
library function and prints. `cli.py` assembles them into the Typer app (`slimp`)."""
