"""The ONNX machinery several commands stand on, below all of them (it imports no command).

    export     PyTorch -> ONNX: the exporter choice, opsets, the graph's input and output names
    runtime    onnxruntime: the import, the providers, sessions, batched runs, `ort_available`
    metadata   the te.* metadata a model file carries (what te export writes and te predict reads)
    recipes    the int8 recipes, and what te predict says about a model's recipe on this CPU
    int8       the int8 quantizer (onnxruntime's tools, nodes kept in float, the sensitivity ranking)
    quantize   fp16, and the error onnxruntime's quantization tools raise
    backbone   a backbone's graph, exported once and kept in the feature cache

te export writes and checks models with it, te predict serves them, te extract runs a backbone's graph
as an execution backend, te compare times it, and te plugins check exports with te export's policy.

Importing this package imports neither torch nor onnxruntime.
"""
