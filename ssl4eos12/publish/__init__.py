"""Publishing: Arrow shards, their manifest and verification, the dataset card, and the push to the Hub.

The modules depend on one another in one direction only: ``formats``, ``manifest`` <- ``plan`` <- ``shards`` <-
``verify``; ``card`` reads the manifest, ``hub`` uploads the folder.
"""

from .manifest import MANIFEST_FILE, RECORDS_DIR, read_manifest, write_manifest
from .plan import DEFAULT_CONFIG, ShardTask, plan, shard_sizes
from .shards import convert, convert_shard
from .verify import verify, verify_shard

__all__ = [
    "DEFAULT_CONFIG", "MANIFEST_FILE", "RECORDS_DIR", "ShardTask", "convert", "convert_shard", "plan", "read_manifest",
    "shard_sizes", "verify", "verify_shard", "write_manifest",
]
