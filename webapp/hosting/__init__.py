"""Hosting a class: access codes, sessions, the classroom's roster and settings, the store, throttles, metrics, admin.

May import web/'s protocol (payload validation) and Flask; never torch, generation/, models/ or accel/.
"""
