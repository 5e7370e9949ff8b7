"""``python -m p2pmodel``: the same CLI as the ``p2pmodel`` console script."""

from p2pmodel.cli.app import main

main()
