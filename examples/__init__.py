"""Examples of training functions for kind python studies; not part of the installed package."""
