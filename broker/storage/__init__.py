"""Storage: the contract the core needs, the LMDB store, an in-memory store honouring the same
contract, the batch a pass commits, and snapshots."""
