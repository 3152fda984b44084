"""npugen.sim."""
