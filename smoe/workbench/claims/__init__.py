"""Paper claims as data: the claim model and its judgement (`claim`), the registered claims of the seed papers
(`registered`, imported here so that the registry is full whatever module of the package is imported), and running
them (`run`)."""

from smoe.workbench.claims import registered  # noqa: F401  (registers the claims)
