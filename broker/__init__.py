"""The Shoal broker: durable job storage in LMDB and routing over a ZeroMQ ROUTER."""
