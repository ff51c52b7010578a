"""Learning from the store: data context, loader, normalisation statistics, training, evaluation."""
