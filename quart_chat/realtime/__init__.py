"""The real-time path: the chat WebSocket, its outbox, the worker's Redis pub/sub and fan-out."""
