"""Starting a server: TF Serving's flags, the ``ray-tfserving`` command, the pure builder of the
Serve application, the Serve config and cluster files, and Ray patches. The only package that
imports every other one."""
