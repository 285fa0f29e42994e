"""Lightning glue: the LightningModule, data module, CLI, callbacks, checkpoint I/O, DeepSpeed on CPU, Slurm requeue."""
