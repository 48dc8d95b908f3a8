"""The device model file: ONNX export with adaptation inputs, its manifest, parity and int8."""
