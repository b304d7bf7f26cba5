"""`python -m lmsuite` (what torchrun runs) is the `lmsuite` command."""

from lmsuite.cli import main

if __name__ == "__main__":
    main()
