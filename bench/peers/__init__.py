"""Peer optimizers (SMAC3, DEHB, syne-tune) on the replay benchmark, in an environment of their own."""
