"""`python -m maillage`: the same as the `maillage` console script."""

from maillage.cli import main

if __name__ == "__main__":
    main()
