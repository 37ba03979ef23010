"""Billing: the rating engine and tariff management."""
