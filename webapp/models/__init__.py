"""Finding and loading models, and turning their weights into a format (float32, bfloat16, int8, int4).

May import generation/ and accel/ (speed is installed here); never web/, hosting/, serving/, config or Flask.
"""
