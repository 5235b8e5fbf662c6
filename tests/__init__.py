"""
Tests of vss-dispatcher.
"""
