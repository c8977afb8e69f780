"""One file per op: the torch.library custom ops (forward and backward), their fake (meta)
implementations, autograd registration and the per-backend kernel calls."""
