"""`python -m svai` runs the command line."""

from svai.cli import app

app(prog_name="svai")
