"""What a run writes, behind one sink interface (sinks.py): records, videos, wandb runs, TensorBoard files."""
