"""`python -m svai.cli` runs the command line (also under `accelerate launch -m svai.cli`)."""

from svai.cli import app

app(prog_name="svai")
