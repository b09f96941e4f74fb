"""The tunefleet command line and its typed HTTP client."""
