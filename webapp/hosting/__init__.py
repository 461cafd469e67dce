"""Hosting a class: access codes, sessions, the classroom's roster and settings, the store, throttles, metrics, admin.

May import Flask, web/'s protocol and generation/settings.py (plain data); never torch, serving/, models/ or accel/.
"""
