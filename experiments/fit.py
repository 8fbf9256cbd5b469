"""Train a method: ``python -m experiments.fit conf=NAME [key=value ...] [resume=RUN]``."""

from experiments.cli import run
from experiments.training import train

if __name__ == "__main__":
    run(train)
