"""The client's own page for one session: ``GET /m/{token}``, no key, phone-sized HTML.

Why it looks like this:

- The link is the credential: an itsdangerous signature over the session id (secret from
  ``BOOKING_SECRET_KEY``), ``links``. It is valid until a day after the session ends,
  counted from the session as it is now, so a reschedule extends it. A tampered or
  expired link is a 404 that reveals nothing.
- GET never changes anything. Every action is a POST through the same use cases as the
  API (``actions``: same events, same texts). A POST is refused when the browser says it
  comes from another site (``Sec-Fetch-Site``, ``Origin``), and carries a hidden form
  token bound to the session's version: a double submit, or a form older than the
  session, changes nothing a second time.
- The page (``page``) shows first name, local time, location, therapist and status; never
  the treatment or anything else about the client's health. ``routes`` wires it to HTTP.
"""

from services.booking.manage.links import ManageLinks, same_site

__all__ = ["ManageLinks", "same_site"]
