"""Modules shared by train_net.py and scripts/: not part of the installed dysample_d2 package."""
