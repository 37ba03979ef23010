-- 16: minimal INSERTs work (issue 16, items 10 and 18).
-- Every required column that does not identify a row gets a default: mizud/store/defaults.py runs after
-- these statements (the rule is the same on both engines; docs/schema.md lists the defaults).
-- An opening balance inserted by SQL enters the ledger (the triggers in 16_defaults.sql.ENGINE), so the
-- ledger still sums to every balance.  mizud's own inserts leave credit at 0 and write the ledger row
-- themselves.
-- 1 for the test records gencdr writes: never charged, and rebill leaves them alone.
ALTER TABLE tb_cdrs ADD COLUMN generated INTEGER NOT NULL DEFAULT 0;
