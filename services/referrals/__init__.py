"""The referrals service: partners, multi-therapy care plans, referrals and their lifecycle."""
