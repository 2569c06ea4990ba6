"""TF Serving's Source / Manager / Policy over Ray Serve: the repository scan (source), the pure
plan of which versions to serve (policy), and the version manager that probes, applies and
reports (manager), with the config file source and the fault log."""
