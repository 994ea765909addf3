"""``serve``: a trained model over HTTP (an ASGI app on uvicorn), and a page to try it in a browser.

:mod:`.model` loads the runs as ``predict`` does and scores pixel rows, :mod:`.payload` turns
MLflow's scoring requests into pixel rows and :mod:`.upload` image files, :mod:`.batcher` joins
concurrent requests into one forward pass, :mod:`.app` is the ASGI application (routes, token,
limits, access log), :mod:`.exchange` one request's body and answer (limits, JSON errors),
:mod:`.protocol` bounds what a connection may do before its request is whole, and
:mod:`.server` binds the socket and runs uvicorn until SIGTERM.
"""
