"""`python -m medimg_cli` runs the command-line interface."""

from medimg_cli.cli.app import main

if __name__ == "__main__":
    main()
