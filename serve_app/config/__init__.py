"""The typed configuration: pydantic models with a docstring per field, the one source of the
CLI's flags, the Serve app's arguments and the cluster files. Imports nothing else of ours."""
