"""One thin click command per module; each parses options and calls library code."""
