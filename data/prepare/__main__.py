"""``python -m data.prepare videos=DIR out=SHARDS [key=value ...]`` (see :mod:`data.prepare.cli`)."""

from data.prepare.cli import main

main()
