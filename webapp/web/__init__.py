"""The web front: Socket.IO events, HTTP views, the protocol's payloads, published documents, lesson data.

May import Flask, hosting/ and generation/settings.py (plain data); never torch, serving/, models/ or accel/.
"""
