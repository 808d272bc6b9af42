"""KServe's own clients against a maas endpoint, with their default settings (protocol v2 named, as OIP
servers need): InferenceRESTClient (readiness, binary infer) and InferenceGRPCClient (readiness, infer).
Run in a process of its own (kserve's generated `inference` protos clash with tritonclient.grpc's);
prints one JSON line: {"rest": {...}, "grpc": {...}}.

    python kserve_clients.py HTTP_URL GRPC_HOST:PORT MODEL INPUT_JSON
"""

import asyncio
import json
import sys

import numpy as np


async def main(url: str, grpc_url: str, model: str, rows: np.ndarray) -> dict:
    from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

    out = {}
    rest = InferenceRESTClient(RESTConfig(protocol="v2"))
    try:
        inp = InferInput("input", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)  # binary tensor data: the client's default
        result = await rest.infer(url, InferRequest(model_name=model, infer_inputs=[inp]), model_name=model)
        out["rest"] = {"live": await rest.is_server_live(url), "ready": await rest.is_server_ready(url),
                       "model_ready": await rest.is_model_ready(url, model),
                       "labels": result.outputs[0].as_numpy().tolist(),
                       "outputs": [o.name for o in result.outputs]}
    finally:
        await rest.close()
    grpc = InferenceGRPCClient(grpc_url)
    try:
        inp = InferInput("input", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows, binary_data=False)
        result = await grpc.infer(InferRequest(model_name=model, infer_inputs=[inp]))
        out["grpc"] = {"live": await grpc.is_server_live(), "ready": await grpc.is_server_ready(),
                       "model_ready": await grpc.is_model_ready(model),
                       "labels": result.outputs[0].as_numpy().tolist(),
                       "outputs": [o.name for o in result.outputs]}
    finally:
        await grpc.close()
    return out


if __name__ == "__main__":
    url, grpc_url, model, rows = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    print(json.dumps(asyncio.run(main(url, grpc_url, model, np.asarray(rows, dtype=np.float32)))))
