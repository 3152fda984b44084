"""npugen.flows."""
