# lmsuite before torch in every test process, spawned workers included, so that all of them run
# the same matrix products (lmsuite/blas.py).
import lmsuite  # noqa: F401
