"""Load tests: locust users (``loadtests/locustfile.py``, run by ``python -m loadtests.run``)
and the side-by-side benchmark (``python -m loadtests.bench``)."""
