"""Trained models leave the package: ONNX graphs (:mod:`.onnx`) and safetensors files
(:mod:`.safetensors`). Both are optional extras (``pip install -e '.[export]'``)."""
