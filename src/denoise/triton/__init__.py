"""Triton: the model repository (`repository`), a real ``tritonserver`` process (`server`), a client
as a ``denoise`` backend (`client`), and the triton-smoke stage (`smoke`).

Repository layout (what Triton expects)::

    <repo>/denoise_onnx/config.pbtxt     + 1/model.onnx    platform onnxruntime_onnx
    <repo>/denoise_python/config.pbtxt   + 1/model.onnx + 1/model.py   backend python
    <repo>/denoise_trt/config.pbtxt      + 1/model.plan    platform tensorrt_plan (GPU only)

Every model takes ``noisy`` and returns ``denoised``: FP32, dims ``[3, -1, -1]`` plus the batch
dimension (``max_batch_size > 0``), values in [0, 1].

The server is either a full ``tritonserver`` on PATH (or given explicitly) or the CPU-only one
bundled in the nvidia-pytriton wheel, which has the python backend only, so it serves
``denoise_python``. For that one `server` prepares a backend folder holding the python
stub that matches the running interpreter, puts the interpreter's ``LIBDIR`` first on
``LD_LIBRARY_PATH`` (else the stub may load a different libpython) and this environment's
``bin`` first on ``PATH`` (the stub ignores PYTHONPATH and finds its interpreter, hence numpy
and onnxruntime, as ``python3`` on PATH). Servers bind 127.0.0.1 only, run in their own process
group and are always stopped, also on Ctrl-C / SIGTERM.
"""
