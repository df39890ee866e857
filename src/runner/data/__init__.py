"""Data: readers, synthetic sets, device-resident splits and batched transforms."""
