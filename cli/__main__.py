"""`python -m tsinfer.cli ...` and `torchrun ... -m tsinfer.cli train bert ...`: the `tsinfer` command."""
from tsinfer.cli import main

main(prog_name="tsinfer")
