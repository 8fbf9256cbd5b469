"""``python -m data.synthetic out=DIR [key=value ...]`` (see :mod:`data.synthetic.cli`)."""

from data.synthetic.cli import main

main()
