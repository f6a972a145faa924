"""The Shoal worker: runs one group's workflows for the broker."""
