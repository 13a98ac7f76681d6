"""The `medprobe` command. Ctrl-C while the command is still starting (importing its libraries) ends quietly
with exit code 130 too; once it runs, the CLI turns Ctrl-C into one line naming what was kept."""

import sys


def main() -> None:
    try:
        from medprobe.cli import main as run_cli
    except KeyboardInterrupt:
        sys.exit(130)
    try:
        run_cli()
    except KeyboardInterrupt:  # in the instant between the command's end and ignoring Ctrl-C (cli.main)
        sys.exit(130)


if __name__ == "__main__":
    main()
