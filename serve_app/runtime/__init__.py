"""What runs in the serving processes: the ingress (the Ray deployment that hosts the transports),
a model version's replica, batching, the per-replica config and the request log."""
