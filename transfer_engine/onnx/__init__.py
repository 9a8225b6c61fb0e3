"""The ONNX machinery several commands stand on, below all of them (it imports no command).

    export     PyTorch -> ONNX: the exporter choice, opsets, the graph's input and output names
    runtime    onnxruntime: the import, the providers, sessions, batched runs, `ort_available`
    metadata   the te.* metadata a model file carries (what te export writes and te predict reads)

te export writes and checks models with it, te predict serves them, te extract runs a backbone's graph
as an execution backend, te compare times it, and te plugins check exports with te export's policy.

Importing this package imports neither torch nor onnxruntime.
"""
