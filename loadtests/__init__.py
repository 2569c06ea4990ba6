"""Load tests: locust users (``loadtests/locustfile.py``), run by ``python -m loadtests.run``."""
