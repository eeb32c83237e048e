"""Test-session settings: one intra-op thread.

The suite is dominated by tiny convolutions, for which a second OpenMP thread only adds synchronisation, and
which slow down by orders of magnitude when another process competes for the cores (OpenMP spin-waits).
Subprocesses started by the tests inherit OMP_NUM_THREADS.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("UDAVAE_NO_MALLOC_TUNING", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
