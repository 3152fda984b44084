"""npugen.golden."""
