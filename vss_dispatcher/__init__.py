"""
vss-dispatcher: takes display jobs from RabbitMQ and shows them through VSS,
letting priority jobs interrupt normal ones.
"""

__version__ = "0.1.0"
