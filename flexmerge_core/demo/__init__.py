"""The embedded demo zoos' builders (offline, deterministic, cached under cache/)."""
