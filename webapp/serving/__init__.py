"""The only bridge between the web front and generation: the scheduler, the model's thread, loading models.

May import anything below it (generation/, models/, accel/ through models) and web/'s protocol; never Flask.
"""
