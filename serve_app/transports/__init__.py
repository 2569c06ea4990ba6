"""The wire: gRPC listeners (TF Serving's and the Open Inference services, health), REST (TF
Serving's and V2 paths), the unix socket. Each transport decodes, calls the data plane, encodes;
none imports the runtime, the lifecycle or the launch."""
