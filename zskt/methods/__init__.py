"""One LightningModule per transfer method."""
