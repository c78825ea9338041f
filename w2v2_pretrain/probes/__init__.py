"""Representation probes: how much of the characters and speakers of held-out speech a frozen
layer makes linearly available, and label-free measures (effective rank, cluster quality)."""
