"""The billing store: engines, schema, transactions, money."""
