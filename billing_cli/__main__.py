"""``python -m billing_cli`` is the same as the installed ``billing`` command."""

from billing_cli.app import main

main()
