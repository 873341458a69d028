"""`python -m synnav_cli` (what torchrun launches) runs the same CLI as `synnav`."""

from synnav_cli.cli.main import cli

if __name__ == "__main__":
    cli(prog_name="synnav")
