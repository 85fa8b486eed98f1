"""The worker's versioned HTTP API: FastAPI app, schemas, codecs, jobs and the ``serve`` entry point."""
