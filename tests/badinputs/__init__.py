"""The bad-input corpus: generated broken zoos and bad options, each with its documented error."""
