"""``serve``: a trained model over HTTP (an ASGI app on uvicorn), and a page to try it in a browser.

:mod:`.model` loads the runs as ``predict`` does and scores pixel rows, :mod:`.payload` turns
MLflow's scoring requests and multipart uploads into pixel rows, :mod:`.batcher` joins concurrent
requests into one forward pass, :mod:`.app` is the ASGI application (routes, token, limits, JSON
errors, access log), :mod:`.protocol` bounds what a connection may do before its request is whole,
and :mod:`.server` binds the socket and runs uvicorn until SIGTERM.
"""
