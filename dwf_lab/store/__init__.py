"""What a run keeps on disk: safe checkpoints (``checkpoints``) and run directories (``runs``)."""
