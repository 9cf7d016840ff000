"""Orders and what follows a sale: tickets and their codes, the order view, refunds,
confirmations and notifications."""
