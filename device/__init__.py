"""The edge side of cdca: runs the ONNX student with onnxruntime and NumPy; never imports torch."""
