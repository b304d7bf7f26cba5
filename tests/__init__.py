# The test processes, spawned workers included, configure themselves as the lmsuite command
# does, first, so that all of them run the same matrix products (lmsuite/accel/blas.py).
import lmsuite.accel

lmsuite.accel.configure_process()
