"""`python -m rpmgw` is the same as the `rpmgw` command."""

from rpmgw.cli import main

main()
