"""The replay benchmark: real training curves recorded once per task, and a surrogate that replays any configuration."""
