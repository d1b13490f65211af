"""The benchmark: asgi_todo against its FastAPI twin and a bare-ASGI ceiling (`python -m tests.bench.run`)."""
