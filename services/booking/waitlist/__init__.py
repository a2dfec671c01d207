"""The waitlist: clients waiting for a treatment are offered the slots others free.

- ``rules``: pure rules (times of day, which entry a freed slot fits, offer states);
- ``entries``: the front desk adds, lists and removes entries;
- ``offers``: a slot freed by a cancel or a move is offered to up to three waiting
  entries, in the order they joined, inside the transaction that freed it; an offer that
  lapses passes the slot on to the next entry;
- ``claims``: a client's BOOK reply (``reminders.reply.received``, intent ``claim``)
  books the slot through the normal booking use case; the first claim wins;
- ``lapses``: the one loop (one replica, behind a NATS KV lease) that lapses offers.
"""
