"""From measurements to a verdict: the primary metric, paired evidence, costs at volume, and the rules."""
