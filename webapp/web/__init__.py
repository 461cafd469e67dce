"""The web front: Socket.IO events, HTTP views, the protocol's payloads, published documents, lesson data.

May import hosting/ and serving/ (to hand work over), never torch, generation/, models/ or accel/.
"""
