"""Other people's layouts turned into zoos: research folders, prefixed/pickled checkpoints, zero-shot heads."""
