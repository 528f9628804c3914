"""Paper claims as data: the claim model and its judgement, the registered claims, and running them."""
