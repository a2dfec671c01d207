"""Code the clinic's services share: the event contract and the plumbing around it.

This package never imports from ``services``.
"""
