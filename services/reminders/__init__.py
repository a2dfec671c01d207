"""The reminders service: texts clients about their sessions over Twilio, at the right time."""
