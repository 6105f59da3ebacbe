"""The core layer: flows and warps, image processing, ensembles, metrics, colours and the
bounded-memory large-image path. It knows nothing of models, tasks, training or the CLI."""
