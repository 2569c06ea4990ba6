"""What runs in the serving processes: the ingress (the Ray deployment that hosts the transports),
its data plane (what every transport calls), a model version's replica, batching, the
per-replica config and the request log."""
