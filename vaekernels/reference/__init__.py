"""The ``reference`` backend: each op written the plain-torch way, differentiated by torch
autograd.  It is the naive implementation that vaekernels replaces, and the test oracle (run it
in float64).  Its random stream is the same as every other backend's, sample for sample."""
