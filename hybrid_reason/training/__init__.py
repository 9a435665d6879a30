"""Lightning training: the data module, the persistent-carry module, the recipe CLI."""
