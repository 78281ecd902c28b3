"""Webhooks: Standard Webhooks signatures, the webhook URL rules, and outbox delivery."""
