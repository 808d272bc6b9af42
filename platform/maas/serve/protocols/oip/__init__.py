"""Open Inference Protocol v2 (KServe): ``codec`` (JSON requests, responses and metadata, pure), ``binary`` (the
binary tensor extension, pure), ``handlers`` (the REST routes bound to the served models), ``grpc_service`` (the
same protocol over gRPC through Serve's gRPC proxy) and ``proto`` (its compiled service descriptor)."""
