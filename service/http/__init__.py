"""The HTTP server over the core: settings, the app factory, batching, the executor, the live model,
observability, the routes (api/) and the web page (web/)."""
