"""Where versions live: the local file system or an object store (``s3://``, ``gs://``), behind
one interface (``versions.VersionStore``: list versions, stamp one, fetch one to a local path),
its implementations (``local``, ``store``), the factory that picks one from a path
(``factory.open_store``) and the local cache that object-store versions are fetched into
(``cache``). Used by the runtime (a replica fetches its version) and the lifecycle (the manager
lists versions)."""
