"""The clinic's services: booking, reminders, referrals."""
