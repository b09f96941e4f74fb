"""The GPU side of tunefleet: pull trials, fine-tune, report."""
