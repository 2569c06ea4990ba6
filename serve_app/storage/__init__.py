"""Where versions live: the local file system or an object store (``s3://``, ``gs://``), their
listing and the local cache that remote versions are fetched into. Used by the runtime (a replica
fetches its version) and the lifecycle (the manager lists versions)."""
