"""npugen.hw."""
