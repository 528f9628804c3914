import sys

from smoe.cli import main

if __name__ == "__main__":  # not in the worker processes of `smoe compare --jobs`, which import this module
    sys.exit(main())
